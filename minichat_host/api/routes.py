"""Registers the non-streaming chat API routes (chats, messages list, reactions, models, quota status).

`app.py` calls `register_all(app, prefix)`; the handlers find their services under `CHAT_SERVICES_KEY`
(api/services.py), which `app.py` fills in its cleanup context.
"""

from __future__ import annotations

from aiohttp import web

from minichat_host.api import admin, attachments, chats, messages, models, openapi, quota, reactions, sse
from minichat_host.api import stream as stream_api
from minichat_host.api import turns as turns_api

# Hottest first. aiohttp resolves a path under `/v1/chats` by trying that prefix's routes in registration
# order, a regular expression each: get turn, registered eighth, ran ~40k instructions of failed matches a
# request (~6% of its cost). The patterns are disjoint, so the order changes the time only. The chats come
# first for the listing's plain path (a string comparison).
_BY_USE = (chats, messages, stream_api, turns_api, quota, reactions, models, attachments, admin, openapi)


def register_all(app: web.Application, prefix: str) -> None:
    sse.install(app)
    for module in _BY_USE:
        module.register(app, prefix)
