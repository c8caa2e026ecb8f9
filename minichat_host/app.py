"""The aiohttp application: typed state (`web.AppKey`) and lifecycle through `cleanup_ctx`.

This is the composition root: the only module that wires api, domain services, database, outbox, plugins
and providers together.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence

import databases
from aiohttp import web
from prometheus_client import CollectorRegistry

from minichat_host.api import console, health
from minichat_host.api.admin import ADMIN_OUTBOX_KEY, METRICS_REGISTRY_KEY
from minichat_host.api.attachments import ATTACHMENT_SERVICE_KEY
from minichat_host.api.edge import edge_middleware
from minichat_host.api.routes import register_all
from minichat_host.api.services import CHAT_SERVICES_KEY, build_chat_services
from minichat_host.api.turns import TURN_SERVICE_KEY
from minichat_host.auth import Authenticator
from minichat_host.config import Config
from minichat_host.db.engine import connect_database, dialect_name, prime_statements
from minichat_host.db.migrate import aupgrade
from minichat_host.domain.attachments import AttachmentService, make_local_search, make_local_sheet_reader
from minichat_host.domain.cleanup import chat_deletion_hook, register_cleanup_queues
from minichat_host.domain.summaries import register_summary_queue
from minichat_host.domain.turns import TurnService
from minichat_host.domain.watchdog import OrphanWatchdog
from minichat_host.outbox import Outbox, OutboxMetrics, SchedulerAlreadyRunning
from minichat_host.outbox.routing import register_plugin_queues
from minichat_host.plugins.manager import PluginHost
from minichat_host.providers.base import ProviderRegistry

log = logging.getLogger("minichat.app")

CONFIG_KEY = web.AppKey("config", Config)
DATABASE_KEY = web.AppKey("database", databases.Database)
PLUGINS_KEY = web.AppKey("plugins", PluginHost)
OUTBOX_KEY = web.AppKey("outbox", Outbox)
PROVIDERS_KEY = web.AppKey("providers", ProviderRegistry)


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
    started = time.perf_counter()
    compiled = prime_statements(database)
    log.debug("compiled %d prepared statements in %.1f ms", compiled, (time.perf_counter() - started) * 1000)
    try:
        yield
    finally:
        await database.disconnect()


CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def _plugins_ctx(extra_plugins: Sequence[tuple[str, object]], load_entry_points: bool) -> CleanupContext:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        host = PluginHost(app[CONFIG_KEY], load_entry_points=load_entry_points, extra_plugins=extra_plugins)
        await host.start()
        app[PLUGINS_KEY] = host
        try:
            yield
        finally:
            await host.aclose()

    return ctx


async def _chat_services_ctx(app: web.Application) -> AsyncIterator[None]:
    app[CHAT_SERVICES_KEY] = build_chat_services(app[CONFIG_KEY], app[DATABASE_KEY], app[PLUGINS_KEY])
    yield


async def _outbox_ctx(app: web.Application) -> AsyncIterator[None]:
    """The outbox with the usage and audit queues routed to the plugins; its scheduler runs in-process."""
    config = app[CONFIG_KEY]
    database, plugins = app[DATABASE_KEY], app[PLUGINS_KEY]
    outbox = Outbox(
        database,
        config.outbox,
        dialect=dialect_name(config.database_url()),
        metrics=OutboxMetrics(app[METRICS_REGISTRY_KEY]),
    )
    register_plugin_queues(outbox, plugins, config)
    register_cleanup_queues(outbox, plugins, database, config)
    register_summary_queue(
        outbox,
        database=database,
        catalog=app[CHAT_SERVICES_KEY].catalog,
        providers=app[PROVIDERS_KEY],
        config=config,
    )
    started = False
    if config.outbox.enabled:
        try:
            await outbox.start()
            started = True
        except SchedulerAlreadyRunning as exc:
            # SQLite: another process (or app) on this file delivers; this one only enqueues.
            log.error("%s", exc)
    if not started:
        await outbox.ensure_queues()
    app[OUTBOX_KEY] = outbox
    app[ADMIN_OUTBOX_KEY] = outbox
    try:
        yield
    finally:
        await outbox.stop()


async def _providers_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    # Providers without hosted tools (local, openai_chat) search and read files through local storage.
    registry = ProviderRegistry(
        config.providers,
        local_search=make_local_search(app[DATABASE_KEY], app[PLUGINS_KEY]),
        local_sheet_reader=make_local_sheet_reader(config.data_dir()),
        local_token_delay_seconds=config.streaming.local_token_delay_seconds,
    )
    # Built now, not on a first turn: an adapter's import and set-up would hold up the first requests.
    registry.build_all()
    app[PROVIDERS_KEY] = registry
    try:
        yield
    finally:
        await registry.aclose()


async def _attachments_ctx(app: web.Application) -> AsyncIterator[None]:
    """Uploads, and chat deletion that enqueues provider clean-up in the same transaction."""
    services = app[CHAT_SERVICES_KEY]
    service = AttachmentService(
        app[DATABASE_KEY],
        config=app[CONFIG_KEY],
        catalog=services.catalog,
        plugins=app[PLUGINS_KEY],
        outbox=app[OUTBOX_KEY],
    )
    await asyncio.to_thread(service.purge_stale_uploads)
    services.chats.add_deletion_hook(chat_deletion_hook(app[OUTBOX_KEY]))
    app[ATTACHMENT_SERVICE_KEY] = service
    yield


async def _turns_ctx(app: web.Application) -> AsyncIterator[None]:
    """Streamed turns and the orphan watchdog; on shutdown live turns are finalized `cancelled`."""
    config = app[CONFIG_KEY]
    service = TurnService(
        database=app[DATABASE_KEY],
        outbox=app[OUTBOX_KEY],
        policy=app[CHAT_SERVICES_KEY].catalog,
        providers=app[PROVIDERS_KEY],
        config=config,
    )
    app[TURN_SERVICE_KEY] = service
    watchdog_task: asyncio.Task[None] | None = None
    if config.orphan_watchdog.enabled:
        watchdog = OrphanWatchdog(
            database=app[DATABASE_KEY],
            outbox=app[OUTBOX_KEY],
            policy=app[CHAT_SERVICES_KEY].catalog,
            finalizer=service.finalizer,
            config=config,
            clock=service.clock,
        )
        watchdog_task = asyncio.create_task(watchdog.run(), name="orphan-watchdog")
    try:
        yield
    finally:
        if watchdog_task is not None:
            watchdog_task.cancel()
            await asyncio.gather(watchdog_task, return_exceptions=True)
        await service.aclose()


def create_app(
    config: Config,
    *,
    extra_plugins: Sequence[tuple[str, object]] = (),
    load_entry_points: bool = True,
) -> web.Application:
    prefix = config.server.url_prefix.rstrip("/")
    app = web.Application(
        middlewares=[edge_middleware(Authenticator(config.auth), prefix)],
        client_max_size=config.server.max_json_body_bytes,
    )
    app[CONFIG_KEY] = config
    app[METRICS_REGISTRY_KEY] = CollectorRegistry()
    health.register(app, prefix)
    app.cleanup_ctx.append(_database_ctx)
    app.cleanup_ctx.append(_plugins_ctx(extra_plugins, load_entry_points))
    register_all(app, prefix)
    console.register(app, prefix, enabled=config.server.web_console)
    app.cleanup_ctx.append(_chat_services_ctx)
    app.cleanup_ctx.append(_providers_ctx)
    app.cleanup_ctx.append(_outbox_ctx)
    app.cleanup_ctx.append(_attachments_ctx)
    app.cleanup_ctx.append(_turns_ctx)
    return app
