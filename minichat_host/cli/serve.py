"""`minichat serve`: run migrations, start the host, stop gracefully on SIGTERM/SIGINT (exit 0)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
from collections.abc import Callable
from typing import Any

from aiohttp import web

from minichat_host.app import create_app
from minichat_host.auth import check_bind_allowed
from minichat_host.cli.exit_codes import ExitCode
from minichat_host.config import Config, ConfigError, load_config
from minichat_host.listener import AcceptAllSite
from minichat_host.logs import configure_logging


async def _freeze_startup_objects(app: web.Application) -> None:
    """Move what startup built (modules, SQLAlchemy metadata, compiled statements, plugins) out of the
    collector's reach: a full collection otherwise walks all of it, 40-60 ms with the loop stopped, which
    showed as the p99 of the hot endpoints and of the first token (bench/api.py, bench/stream.py)."""
    gc.collect()
    gc.freeze()


def _event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """`server.event_loop`: None (asyncio's standard loop) unless uvloop is asked for (or `auto` and
    installed). A factory for the runner, not `uvloop.install()`: event loop policies are deprecated
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


# What `run_app` gave an idle keep-alive connection before the listener replaced it (aiohttp's server on its
# own keeps one for an hour).
KEEPALIVE_TIMEOUT_SECONDS = 75.0


def app_runner(app: web.Application, config: Config) -> web.AppRunner:
    """The runner `minichat serve` starts, with the settings `run_app` gave it (no access log)."""
    return web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=KEEPALIVE_TIMEOUT_SECONDS,
        shutdown_timeout=config.server.shutdown_timeout_seconds,
    )


async def _serve_until_signalled(app: web.Application, config: Config) -> None:
    """Serve `app` until SIGTERM/SIGINT, then stop gracefully: stop accepting, let in-flight requests
    finish (up to `server.shutdown_timeout_seconds`), run the cleanup contexts.

    aiohttp's runner API rather than `run_app`, whose listener on uvloop lets in one new connection per
    loop iteration (`minichat_host.listener`)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = app_runner(app, config)
    await runner.setup()
    try:
        site = AcceptAllSite(runner, config.server.host, config.server.port)
        await site.start()
        print(f"======== Running on {site.name} ========\n(Press CTRL+C to quit)", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


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
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve_until_signalled(app, config))
    return ExitCode.OK


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser("serve", help="run the HTTP service")
    parser.add_argument("--host", help="bind address (overrides server.host)")
    parser.add_argument("--port", type=int, help="port (overrides server.port)")
    parser.set_defaults(func=_serve)
