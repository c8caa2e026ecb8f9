"""`GET /v1/chats/{id}/messages`: the visible messages of the caller's chat, oldest first, in keyset pages.

(The streaming `POST …/messages:stream` lives in its own module.)
"""

from __future__ import annotations

from aiohttp import web

from minichat_host.api.problems import json_response, path_uuid
from minichat_host.api.services import chat_services
from minichat_host.auth import identity
from minichat_host.domain.chats import parse_page_query


async def list_messages(request: web.Request) -> web.Response:
    who = identity(request)
    chat_id = path_uuid(request, "id")
    page = parse_page_query(request.query, sort_field="created_at")
    result = await chat_services(request).messages.list_messages(who.tenant_id, who.user_id, chat_id, page)
    return json_response(result)


def register(app: web.Application, prefix: str) -> None:
    app.router.add_get(f"{prefix}/v1/chats/{{id}}/messages", list_messages)
