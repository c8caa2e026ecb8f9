"""The aiohttp application: typed state (`web.AppKey`) and lifecycle through `cleanup_ctx`.

This is the composition root: the only module that wires api, domain services, database, outbox, plugins
and providers together.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

import databases
from aiohttp import web

from minichat_host.api import health
from minichat_host.api.problems import problem_middleware, request_id_middleware
from minichat_host.auth import Authenticator, auth_middleware
from minichat_host.config import Config
from minichat_host.db.engine import connect_database
from minichat_host.db.migrate import aupgrade
from minichat_host.plugins.manager import PluginHost

log = logging.getLogger("minichat.app")

CONFIG_KEY = web.AppKey("config", Config)
DATABASE_KEY = web.AppKey("database", databases.Database)
PLUGINS_KEY = web.AppKey("plugins", PluginHost)


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    url = config.database_url()
    if url.startswith("sqlite"):
        config.data_dir().mkdir(parents=True, exist_ok=True)
    if config.database.migrate_on_start:
        await aupgrade(url)
    database = await connect_database(
        url,
        min_size=config.database.pool_min_size,
        max_size=config.database.pool_max_size,
        sqlite_busy_timeout_ms=config.database.sqlite_busy_timeout_ms,
    )
    app[DATABASE_KEY] = database
    try:
        yield
    finally:
        await database.disconnect()


def _plugins_ctx(extra_plugins: Sequence[tuple[str, object]], load_entry_points: bool) -> web.CleanupContext:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        host = PluginHost(app[CONFIG_KEY], load_entry_points=load_entry_points, extra_plugins=extra_plugins)
        await host.start()
        app[PLUGINS_KEY] = host
        try:
            yield
        finally:
            await host.aclose()

    return ctx


def create_app(
    config: Config,
    *,
    extra_plugins: Sequence[tuple[str, object]] = (),
    load_entry_points: bool = True,
) -> web.Application:
    prefix = config.server.url_prefix.rstrip("/")
    app = web.Application(
        middlewares=[
            request_id_middleware,
            problem_middleware,
            auth_middleware(Authenticator(config.auth), prefix),
        ],
        client_max_size=config.server.max_json_body_bytes,
    )
    app[CONFIG_KEY] = config
    health.register(app, prefix)
    app.cleanup_ctx.append(_database_ctx)
    app.cleanup_ctx.append(_plugins_ctx(extra_plugins, load_entry_points))
    return app
