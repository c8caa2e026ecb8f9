"""`GET /v1/models` and `GET /v1/models/{model_id}`: the enabled models of the caller's policy.

Model ids contain dots (`gpt-4.1`) and may contain slashes (`org/model`), so the id pattern takes the
rest of the path.
"""

from __future__ import annotations

from aiohttp import web

from minichat_host.api.problems import json_response
from minichat_host.api.services import chat_services
from minichat_host.auth import identity


async def list_models(request: web.Request) -> web.Response:
    who = identity(request)
    return json_response(await chat_services(request).catalog.list_models(who.tenant_id, who.user_id))


async def get_model(request: web.Request) -> web.Response:
    who = identity(request)
    model_id = request.match_info["model_id"]
    return json_response(await chat_services(request).catalog.get_model(who.tenant_id, who.user_id, model_id))


def register(app: web.Application, prefix: str) -> None:
    app.router.add_get(f"{prefix}/v1/models", list_models)
    app.router.add_get(f"{prefix}/v1/models/{{model_id:.+}}", get_model)
