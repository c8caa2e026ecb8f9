"""The edge middleware: one layer for the request id, authentication under the prefix and problem+json."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from minichat_host.api.edge import edge_middleware
from minichat_host.auth import Authenticator, identity
from minichat_host.config import parse_config
from minichat_host.domain.errors import DomainError

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
TENANT = "00000000-0000-4000-8000-000000000001"
USER = "00000000-0000-4000-8000-000000000002"
SECRET = "gateway-secret-long-enough"


def make_app() -> web.Application:
    config = parse_config(
        {"auth": {"mode": "trusted_headers", "trusted_headers": {"secret": SECRET}}}, env={}
    )
    app = web.Application(middlewares=[edge_middleware(Authenticator(config.auth), "/p")])

    async def me(request: web.Request) -> web.Response:
        return web.json_response({"user": str(identity(request).user_id)})

    async def broken(request: web.Request) -> web.Response:
        identity(request)
        raise ZeroDivisionError("a bug")

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/p/v1/me")

    async def conflict(request: web.Request) -> web.Response:
        raise DomainError("Already there", status=409, code="conflict")

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "healthy"})

    app.router.add_get("/p/v1/me", me)
    app.router.add_get("/p/v1/broken", broken)
    app.router.add_get("/p/v1/moved", moved)
    app.router.add_get("/p/v1/conflict", conflict)
    app.router.add_get("/healthz", health)
    return app


def caller(**extra: str) -> dict[str, str]:
    return {"X-Tenant-Id": TENANT, "X-User-Id": USER, "X-Gateway-Secret": SECRET, **extra}


async def test_an_authenticated_call_echoes_the_request_id(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app())
    resp = await client.get("/p/v1/me", headers=caller(**{"X-Request-Id": "req-1"}))
    assert resp.status == 200
    assert await resp.json() == {"user": USER}
    assert resp.headers["X-Request-Id"] == "req-1"


async def test_a_missing_identity_is_a_401_problem_with_the_trace_id(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app())
    resp = await client.get("/p/v1/me")
    assert resp.status == 401
    assert resp.content_type == "application/problem+json"
    body = await resp.json(content_type=None)
    assert body["code"] == "unauthorized"
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-Id"])
    assert body["trace_id"] == resp.headers["X-Request-Id"]


async def test_generated_request_ids_differ_from_request_to_request(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app())
    ids = [(await client.get("/healthz")).headers["X-Request-Id"] for _ in range(50)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)
    # An unusable incoming id (too long, not printable) is replaced by a generated one.
    for bad in ("x" * 129, "a\tb"):
        resp = await client.get("/healthz", headers={"X-Request-Id": bad})
        assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-Id"])


async def test_paths_outside_the_prefix_need_no_identity(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app())
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert "X-Request-Id" in resp.headers


async def test_domain_errors_and_bugs_become_problems(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app())
    resp = await client.get("/p/v1/conflict", headers=caller())
    assert resp.status == 409
    assert (await resp.json(content_type=None))["code"] == "conflict"
    resp = await client.get("/p/v1/broken", headers=caller(**{"X-Request-Id": "bug-1"}))
    assert resp.status == 500
    body = await resp.json(content_type=None)
    assert (body["code"], body["trace_id"]) == ("internal_error", "bug-1")
    assert "a bug" not in await resp.text()
    resp = await client.get("/p/v1/nowhere", headers=caller())
    assert resp.status == 404
    assert (await resp.json(content_type=None))["code"] == "not_found"


async def test_a_redirect_passes_through(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app())
    resp = await client.get("/p/v1/moved", headers=caller(), allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/p/v1/me"
