"""minichat host: a multi-tenant AI chat service with pluggable policy, audit and storage."""

from minichat_host.plugins.errors import PermanentError, TransientError
from minichat_host.plugins.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["PermanentError", "TransientError", "__version__", "hookimpl"]
