"""`PUT` / `DELETE /v1/chats/{id}/messages/{msg_id}/reaction`: the caller's like/dislike on an assistant
message (200 with the stored reaction / 204 even when there was none)."""

from __future__ import annotations

from aiohttp import web

from minichat_host.api.problems import json_response, path_uuid, read_json
from minichat_host.api.services import chat_services
from minichat_host.auth import identity
from minichat_host.domain.wire import SetReactionRequest


async def set_reaction(request: web.Request) -> web.Response:
    who = identity(request)
    chat_id = path_uuid(request, "id")
    message_id = path_uuid(request, "msg_id")
    body = await read_json(request, SetReactionRequest)
    stored = await chat_services(request).reactions.set_reaction(
        who.tenant_id, who.user_id, chat_id, message_id, body.reaction
    )
    return json_response(stored)


async def remove_reaction(request: web.Request) -> web.Response:
    who = identity(request)
    chat_id = path_uuid(request, "id")
    message_id = path_uuid(request, "msg_id")
    await chat_services(request).reactions.remove_reaction(who.tenant_id, who.user_id, chat_id, message_id)
    return web.Response(status=204)


def register(app: web.Application, prefix: str) -> None:
    path = f"{prefix}/v1/chats/{{id}}/messages/{{msg_id}}/reaction"
    app.router.add_put(path, set_reaction)
    app.router.add_delete(path, remove_reaction)
