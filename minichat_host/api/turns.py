"""Turn endpoints: status (`GET …/turns/{request_id}`), retry (`POST …/retry`), edit (`PATCH`), delete.

Retry and edit answer like a send: problem+json before any stream opens, else the SSE stream of the new
turn (its server-made request_id is in `stream_started`). Delete answers 204 with an empty body.
"""

from __future__ import annotations

from aiohttp import web

from minichat_host.api.problems import REQUEST_ID_KEY, json_response, path_uuid, read_json
from minichat_host.api.sse import write_sse
from minichat_host.auth import identity
from minichat_host.domain.turns import EditTurnRequest, TurnService

TURN_SERVICE_KEY = web.AppKey("turn_service", TurnService)


def turn_service(request: web.Request) -> TurnService:
    return request.app[TURN_SERVICE_KEY]


def trace_id(request: web.Request) -> str | None:
    value = request.get(REQUEST_ID_KEY)
    return value if isinstance(value, str) else None


async def get_turn(request: web.Request) -> web.Response:
    who = identity(request)
    chat_id = path_uuid(request, "id")
    request_id = path_uuid(request, "request_id")
    status = await turn_service(request).turn_status(who.tenant_id, who.user_id, chat_id, request_id)
    return json_response(status)


async def retry_turn(request: web.Request) -> web.StreamResponse:
    who = identity(request)
    chat_id = path_uuid(request, "id")
    request_id = path_uuid(request, "request_id")
    stream = await turn_service(request).retry_turn(
        who.tenant_id, who.user_id, chat_id, request_id, trace_id=trace_id(request)
    )
    return await write_sse(request, stream)


async def edit_turn(request: web.Request) -> web.StreamResponse:
    who = identity(request)
    chat_id = path_uuid(request, "id")
    request_id = path_uuid(request, "request_id")
    body = await read_json(request, EditTurnRequest)
    stream = await turn_service(request).edit_turn(
        who.tenant_id, who.user_id, chat_id, request_id, body, trace_id=trace_id(request)
    )
    return await write_sse(request, stream)


async def delete_turn(request: web.Request) -> web.Response:
    who = identity(request)
    chat_id = path_uuid(request, "id")
    request_id = path_uuid(request, "request_id")
    await turn_service(request).delete_turn(
        who.tenant_id, who.user_id, chat_id, request_id, trace_id=trace_id(request)
    )
    return web.Response(status=204)


def register(app: web.Application, prefix: str) -> None:
    base = f"{prefix}/v1/chats/{{id}}/turns/{{request_id}}"
    app.router.add_get(base, get_turn)
    app.router.add_patch(base, edit_turn)
    app.router.add_delete(base, delete_turn)
    app.router.add_post(f"{base}/retry", retry_turn)
