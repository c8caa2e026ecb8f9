"""`minichat serve`: run migrations, start the host, stop gracefully on SIGTERM/SIGINT (exit 0)."""

from __future__ import annotations

import argparse
import asyncio
import gc
from collections.abc import Callable
from typing import Any

from aiohttp import web

from minichat_host.app import create_app
from minichat_host.auth import check_bind_allowed
from minichat_host.cli.exit_codes import ExitCode
from minichat_host.config import ConfigError, load_config
from minichat_host.logs import configure_logging


async def _freeze_startup_objects(app: web.Application) -> None:
    """Move what startup built (modules, SQLAlchemy metadata, compiled statements, plugins) out of the
    collector's reach: a full collection otherwise walks all of it, 40-60 ms with the loop stopped, which
    showed as the p99 of the hot endpoints and of the first token (bench/api.py, bench/stream.py)."""
    gc.collect()
    gc.freeze()


def _event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """`server.event_loop`: None (run_app's standard loop) unless uvloop is asked for (or `auto` and
    installed). A factory handed to run_app, not `uvloop.install()`: event loop policies are deprecated
    (uvloop warns from Python 3.12)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            message = "server.event_loop is 'uvloop' but the uvloop package is not installed"
            raise ConfigError(message) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _serve(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.host:
        config.server.host = args.host
    if args.port is not None:
        config.server.port = args.port
    loop_factory = _event_loop_factory(config.server.event_loop)  # first: a config error leaves logging alone
    configure_logging(config.server.log_level, config.server.log_format)
    check_bind_allowed(config)
    app = create_app(config)
    app.on_startup.append(_freeze_startup_objects)  # after the cleanup contexts: everything is loaded
    # run_app turns SIGTERM/SIGINT into a graceful exit: stop accepting, let in-flight requests finish.
    web.run_app(
        app,
        loop=loop_factory() if loop_factory is not None else None,
        host=config.server.host,
        port=config.server.port,
        shutdown_timeout=config.server.shutdown_timeout_seconds,
        access_log=None,
        print=lambda msg: print(msg, flush=True),
    )
    return ExitCode.OK


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser("serve", help="run the HTTP service")
    parser.add_argument("--host", help="bind address (overrides server.host)")
    parser.add_argument("--port", type=int, help="port (overrides server.port)")
    parser.set_defaults(func=_serve)
