"""`GET /v1/quota/status`: the caller's credit usage against their limits, per tier and period."""

from __future__ import annotations

from aiohttp import web

from minichat_host.api.problems import json_response
from minichat_host.api.services import chat_services
from minichat_host.auth import identity


async def quota_status(request: web.Request) -> web.Response:
    who = identity(request)
    return json_response(await chat_services(request).quota_status.status(who.tenant_id, who.user_id))


def register(app: web.Application, prefix: str) -> None:
    app.router.add_get(f"{prefix}/v1/quota/status", quota_status)
