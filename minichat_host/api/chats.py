"""`/v1/chats`: create (201 + Location), list (keyset pages), get, rename and soft-delete own chats."""

from __future__ import annotations

from aiohttp import web

from minichat_host.api.problems import json_response, path_uuid, read_json
from minichat_host.api.services import chat_services
from minichat_host.auth import identity
from minichat_host.domain.chats import parse_page_query
from minichat_host.domain.wire import CreateChatRequest, UpdateChatTitleRequest


async def create_chat(request: web.Request) -> web.Response:
    who = identity(request)
    # Both members are optional, so an empty body is accepted as `{}`.
    body = await read_json(request, CreateChatRequest, allow_empty=True)
    chat = await chat_services(request).chats.create_chat(
        who.tenant_id, who.user_id, title=body.title, model=body.model
    )
    return json_response(chat, status=201, headers={"Location": f"{request.path.rstrip('/')}/{chat.id}"})


async def list_chats(request: web.Request) -> web.Response:
    who = identity(request)
    page = parse_page_query(request.query, sort_field="updated_at")
    return json_response(await chat_services(request).chats.list_chats(who.tenant_id, who.user_id, page))


async def get_chat(request: web.Request) -> web.Response:
    who = identity(request)
    chat_id = path_uuid(request, "id")
    return json_response(await chat_services(request).chats.get_chat(who.tenant_id, who.user_id, chat_id))


async def rename_chat(request: web.Request) -> web.Response:
    who = identity(request)
    chat_id = path_uuid(request, "id")
    body = await read_json(request, UpdateChatTitleRequest)
    chat = await chat_services(request).chats.rename_chat(
        who.tenant_id, who.user_id, chat_id, title=body.title
    )
    return json_response(chat)


async def delete_chat(request: web.Request) -> web.Response:
    who = identity(request)
    chat_id = path_uuid(request, "id")
    await chat_services(request).chats.delete_chat(who.tenant_id, who.user_id, chat_id)
    return web.Response(status=204)


def register(app: web.Application, prefix: str) -> None:
    app.router.add_post(f"{prefix}/v1/chats", create_chat)
    app.router.add_get(f"{prefix}/v1/chats", list_chats)
    app.router.add_get(f"{prefix}/v1/chats/{{id}}", get_chat)
    app.router.add_patch(f"{prefix}/v1/chats/{{id}}", rename_chat)
    app.router.add_delete(f"{prefix}/v1/chats/{{id}}", delete_chat)
