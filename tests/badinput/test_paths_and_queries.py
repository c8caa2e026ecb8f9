"""Bad path parameters and query strings: every UUID path parameter of every operation (from the OpenAPI
table) with values that are not UUIDs — traversal, NUL, CR/LF, very long — and the listings' query
parameters at their limits. Each is a problem+json 4xx, echoes nothing into a header, changes nothing."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from yarl import URL

from badinput.conftest import API, Api, expect_problem
from minichat_host.api.openapi import OPERATIONS, PATH_PARAMETERS, Operation

UUID_PARAMETERS = [
    (op, name)
    for op in OPERATIONS
    for name in op.path_parameters
    if PATH_PARAMETERS[name].schema.get("format") == "uuid"
]
# Already percent-encoded as they go on the wire.
NOT_UUIDS = {
    "word": "not-a-uuid",
    "number": "1234",
    "bad-hex": "00000000-0000-0000-0000-00000000000g",
    "too-long": "a" * 2000,
    "nul": "%00",
    "crlf-header": "x%0D%0AX-Injected:%201",
    "traversal": "..%2F..%2Fetc%2Fpasswd",
    "unicode": "%E2%80%AEdcba",
    "sql": "1'%20OR%20'1'='1",
}
VALID_BODIES: dict[str, dict[str, Any]] = {
    "updateChatTitle": {"title": "ok"},
    "sendMessage": {"content": "ok"},
    "editTurn": {"content": "ok"},
    "setReaction": {"reaction": "like"},
}


def no_injected_header(response: aiohttp.ClientResponse) -> None:
    assert not any(name.lower().startswith("x-injected") for name in response.headers)


@pytest.mark.parametrize(
    ("op", "name"), UUID_PARAMETERS, ids=[f"{op.operation_id}-{name}" for op, name in UUID_PARAMETERS]
)
async def test_a_path_parameter_that_is_not_a_uuid_is_400(api: Api, op: Operation, name: str) -> None:
    async with api.unchanged():
        for label, value in NOT_UUIDS.items():
            url = URL(api.url(op, **{name: value}), encoded=True)
            kwargs: dict[str, Any] = {}
            if op.operation_id in VALID_BODIES:
                kwargs["json"] = VALID_BODIES[op.operation_id]
            elif op.upload:
                form = aiohttp.FormData()
                form.add_field("file", b"hello", filename="a.txt", content_type="text/plain")
                kwargs["data"] = form
            response = await api.client.request(op.method.upper(), url, **kwargs)
            no_injected_header(response)
            if "%2F" in value:
                # A decoded slash may leave the route: either way it is a problem, never a match on a file.
                body = await expect_problem(response)
                assert body["code"] in ("invalid_uuid", "not_found"), (label, body)
            else:
                body = await expect_problem(response, 400, "invalid_uuid")
            assert body["detail"].startswith(f"Path parameter '{name}'"), (label, body)


async def test_an_unknown_model_id_is_404(api: Api) -> None:
    for model_id in ("..%2F..%2Fetc%2Fpasswd", "a%00b", "x" * 3000, "%0D%0AX-Injected:%201"):
        response = await api.client.get(URL(f"{API}/models/{model_id}", encoded=True))
        no_injected_header(response)
        body = await expect_problem(response, 404)
        # The route's `{model_id:.+}` does not match a decoded line break: the router's own 404 then.
        assert body["code"] in ("model_not_found", "not_found"), (model_id, body)


LISTINGS = [op for op in OPERATIONS if op.listing is not None]
BAD_QUERIES = [
    ({"limit": "0"}, "invalid_limit"),
    ({"limit": "-1"}, "invalid_limit"),
    ({"limit": "abc"}, "invalid_limit"),
    ({"limit": "1e3"}, "invalid_limit"),
    ({"limit": "+5"}, "invalid_limit"),
    ({"limit": "\u0661\u0662"}, "invalid_limit"),
    ({"limit": ""}, "invalid_limit"),
    ({"limit": "5\u0000"}, "invalid_limit"),
    ({"cursor": "x" * 7000}, "invalid_cursor"),
    ({"cursor": "eyJhIjoxfQ"}, "invalid_cursor"),
    ({"cursor": "\u0000"}, "invalid_cursor"),
    ({"cursor": "%%%"}, "invalid_cursor"),
    ({"$orderby": "x" * 7000}, "invalid_orderby"),
    ({"$orderby": "id; DROP TABLE chats"}, "invalid_orderby"),
    ({"$filter": "title eq 'x'"}, "invalid_filter"),
]


@pytest.mark.parametrize("op", LISTINGS, ids=lambda op: op.operation_id)
async def test_bad_list_queries_are_422(api: Api, op: Operation) -> None:
    async with api.unchanged():
        for params, code in BAD_QUERIES:
            response = await api.client.get(api.url(op), params=params)
            await expect_problem(response, 422, code)


@pytest.mark.parametrize("op", LISTINGS, ids=lambda op: op.operation_id)
async def test_huge_but_well_formed_query_values_are_answered(api: Api, op: Operation) -> None:
    """A 3000-digit limit is clamped (without converting it), unknown parameters are ignored."""
    response = await api.client.get(api.url(op), params={"limit": "9" * 3000, "unknown": "y" * 5000})
    assert response.status == 200, await response.text()
    assert (await response.json())["page_info"]["limit"] == 100
