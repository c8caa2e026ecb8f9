"""The domain services behind the non-streaming chat API, kept on the application under one typed key.

`app.py` (the composition root) builds them with `build_chat_services` once the database and the plugin
host are up; handlers fetch them with `chat_services(request)`. This module imports no handler module
and not `app.py`, so either may import it without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

import databases
from aiohttp import web

from minichat_host.config import Config
from minichat_host.domain.catalog import CatalogService, PolicyHookCaller, QuotaStatusService
from minichat_host.domain.chats import ChatService, MessageService, ReactionService


@dataclass(frozen=True, slots=True)
class ChatApiServices:
    catalog: CatalogService
    chats: ChatService
    messages: MessageService
    reactions: ReactionService
    quota_status: QuotaStatusService


CHAT_SERVICES_KEY = web.AppKey("chat_api_services", ChatApiServices)


def build_chat_services(
    config: Config, database: databases.Database, plugins: PolicyHookCaller
) -> ChatApiServices:
    catalog = CatalogService(plugins)
    chats = ChatService(database, catalog)
    return ChatApiServices(
        catalog=catalog,
        chats=chats,
        messages=MessageService(database, chats),
        reactions=ReactionService(database, chats),
        quota_status=QuotaStatusService(database, catalog, config.quota),
    )


def chat_services(request: web.Request) -> ChatApiServices:
    return request.app[CHAT_SERVICES_KEY]
