"""The one middleware every request passes: its id, authentication under the API prefix, and problem+json
for whatever a handler raises.

One coroutine frame per request instead of three stacked middlewares: a streaming request keeps its
middleware frames for as long as the stream is open (bench/memory.py), and every hot JSON request pays each
layer's call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from minichat_host.api.problems import assign_request_id, problem_for_exception
from minichat_host.auth import IDENTITY_KEY, Authenticator

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def edge_middleware(authenticator: Authenticator, prefix: str) -> Middleware:
    """Request id (echoed as `X-Request-Id`), authentication of every path under `prefix` (the health
    endpoints at the root stay open), and errors as problem+json."""
    api_paths = prefix + "/"

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = assign_request_id(request)
        try:
            if request.path.startswith(api_paths):
                request[IDENTITY_KEY] = authenticator.authenticate(request)
            response = await handler(request)
        except Exception as exc:
            problem = problem_for_exception(request, exc)
            if problem is None:
                raise
            response = problem
        if not response.prepared:
            response.headers["X-Request-Id"] = request_id
        return response

    return middleware
