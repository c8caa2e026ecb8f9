"""Liveness endpoints at the root: `/health` (JSON, as the original) and `/healthz` (plain `ok`)."""

from __future__ import annotations

import datetime as dt

import msgspec
from aiohttp import web

from minichat_host.api.problems import json_response


class Health(msgspec.Struct):
    status: str
    timestamp: str


async def health(request: web.Request) -> web.Response:
    now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    return json_response(Health(status="healthy", timestamp=now))


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def register(app: web.Application, prefix: str) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/healthz", healthz)
