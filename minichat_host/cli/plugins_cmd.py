"""`minichat plugins`: what was discovered, which plugin each capability resolved to, and why.

The command starts the plugin host exactly as `serve` does (settings validated, plugins configured,
capabilities resolved) and closes it again; a set-up error is printed with whatever was discovered, and
the exit code is 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from minichat_host.cli.exit_codes import ExitCode
from minichat_host.config import load_config
from minichat_host.plugins.errors import PluginConfigError
from minichat_host.plugins.manager import PluginHost


async def _inspect(host: PluginHost) -> str | None:
    """Start and close the host; return the start-up error, if any."""
    try:
        await host.start()
    except PluginConfigError as exc:
        return str(exc)
    finally:
        await host.aclose()
    return None


def _report(config_path: str | None) -> tuple[dict[str, Any], str | None]:
    config = load_config(config_path)
    try:
        host = PluginHost(config)
    except PluginConfigError as exc:
        return {"plugins": [], "resolution": []}, str(exc)
    error = asyncio.run(_inspect(host))
    return {"plugins": host.plugins(), "resolution": host.explain()}, error


def _source(plugin: dict[str, Any]) -> str:
    if plugin["source"] == "entry_point":
        return f"entry point, {plugin['distribution']} {plugin['version']}"
    if plugin["source"] == "builtin":
        return f"built-in, {plugin['distribution']} {plugin['version']}"
    return str(plugin["source"])


def _print_text(report: dict[str, Any]) -> None:
    print("Plugins:")
    if not report["plugins"]:
        print("  (none)")
    for plugin in report["plugins"]:
        section = plugin["settings_section"]
        settings = f"  settings: plugins.settings.{section}" if section else ""
        print(f"  {plugin['name']}  ({_source(plugin)}){settings}")
        for cap in plugin["capabilities"]:
            print(f"    - {cap['capability']}: vendor {cap['vendor']!r}, priority {cap['priority']}")
    print()
    print("Capabilities:")
    for entry in report["resolution"]:
        target = entry["capability"] + (f" (provider {entry['provider_id']})" if entry["provider_id"] else "")
        chosen = entry["plugin"] or "-"
        print(f"  {target}: {entry['config_key']} = {entry['vendor']!r} -> {chosen}")
        print(f"      {entry['reason']}")
        for candidate in entry["candidates"]:
            mark = "*" if candidate["chosen"] else " "
            print(
                f"     {mark} {candidate['plugin']} (vendor {candidate['vendor']!r}, "
                f"priority {candidate['priority']}): {candidate['reason']}"
            )


def _plugins(args: argparse.Namespace) -> int:
    report, error = _report(args.config)
    if args.json:
        print(json.dumps({**report, "error": error}, indent=2))
    else:
        _print_text(report)
    if error:
        print(f"minichat: plugin set-up error: {error}", file=sys.stderr)
        return ExitCode.USAGE
    return ExitCode.OK


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser(
        "plugins", help="list plugins and explain which plugin each capability resolved to, and why"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=_plugins)
