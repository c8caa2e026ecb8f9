"""`POST /v1/chats/{id}/messages:stream` (the literal colon path): send a message, stream the answer.

Every pre-stream failure is answered as problem+json without opening a stream (the domain raises it
before anything is written); otherwise the response is the turn's SSE stream (api/sse.py).
"""

from __future__ import annotations

from aiohttp import web

from minichat_host.api.problems import path_uuid, read_json
from minichat_host.api.sse import write_sse
from minichat_host.api.turns import trace_id, turn_service
from minichat_host.auth import identity
from minichat_host.domain.turns import SendMessageRequest


async def send_message(request: web.Request) -> web.StreamResponse:
    who = identity(request)
    chat_id = path_uuid(request, "id")
    body = await read_json(request, SendMessageRequest)
    stream = await turn_service(request).send(
        who.tenant_id, who.user_id, chat_id, body, trace_id=trace_id(request)
    )
    return await write_sse(request, stream)


def register(app: web.Application, prefix: str) -> None:
    app.router.add_post(f"{prefix}/v1/chats/{{id}}/messages:stream", send_message)
