"""Registers the non-streaming chat API routes (chats, messages list, reactions, models, quota status).

`app.py` calls `register_all(app, prefix)`; the handlers find their services under `CHAT_SERVICES_KEY`
(api/services.py), which `app.py` fills in its cleanup context.
"""

from __future__ import annotations

from aiohttp import web

from minichat_host.api import admin, attachments, chats, messages, models, openapi, quota, reactions, sse
from minichat_host.api import stream as stream_api
from minichat_host.api import turns as turns_api


def register_all(app: web.Application, prefix: str) -> None:
    for module in (chats, messages, reactions, models, quota, attachments, admin):
        module.register(app, prefix)
    sse.install(app)
    stream_api.register(app, prefix)
    turns_api.register(app, prefix)
    openapi.register(app, prefix)
