"""Plugin host: hookspecs, the manager (entry points, vendor resolution, timeouts) and built-in plugins."""
