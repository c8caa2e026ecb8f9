"""api/routes.py: the routes are registered hottest first, and every route still resolves to its own handler
(the order must change only how many patterns a request tries, never which one it reaches)."""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from api.helpers import ConfigFactory
from minichat_host.app import create_app

PREFIX_PARAMETER = re.compile(r"\{[^}:]+(?::[^}]*)?\}")


def _routes(app: web.Application) -> list[web.AbstractRoute]:
    return [route for route in app.router.routes() if route.method != "HEAD" and route.resource is not None]


async def test_every_route_resolves_to_its_own_handler(make_config: ConfigFactory) -> None:
    app = create_app(make_config())
    routes = _routes(app)
    assert len(routes) > 20
    for route in routes:
        assert route.resource is not None
        path = PREFIX_PARAMETER.sub("a1b2", route.resource.canonical)
        match_info = await app.router.resolve(make_mocked_request(route.method, path))
        assert match_info.route is route, f"{route.method} {path} reached {match_info.route}"


async def test_the_hot_chat_routes_are_tried_first(make_config: ConfigFactory) -> None:
    app = create_app(make_config())
    under_chats = [
        (route.method, route.resource.canonical.split("/v1/chats", 1)[1])
        for route in _routes(app)
        if route.resource is not None and "/v1/chats" in route.resource.canonical
    ]
    # list chats, list messages, the turn's stream, then its status, before the rest.
    hot = [
        ("GET", ""),
        ("GET", "/{id}/messages"),
        ("POST", "/{id}/messages:stream"),
        ("GET", "/{id}/turns/{request_id}"),
    ]
    positions = [under_chats.index(route) for route in hot]
    assert positions == sorted(positions)
    assert positions[-1] < under_chats.index(("PUT", "/{id}/messages/{msg_id}/reaction"))
    assert positions[-1] < under_chats.index(("POST", "/{id}/attachments"))
