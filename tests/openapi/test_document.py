"""The published OpenAPI document: valid OpenAPI 3.1, served as built (once, at start-up), in step with the
router (every route under the prefix documented, nothing documented that is not routed) and with the wire
structs (SSE events, problem bodies, datetimes)."""

from __future__ import annotations

import datetime as dt
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from minichat_host.api import openapi
from minichat_host.api.openapi import OPENAPI_DOCUMENT_KEY, OPERATIONS, STREAM_EVENTS, build_document
from minichat_host.app import create_app
from minichat_host.config import AuthConfig, Config, TrustedHeadersConfig
from minichat_host.domain import events
from openapi.conftest import PREFIX, embedded_config

# Routes outside the prefix are not part of the chat API (nor of the original's document): the liveness
# probes and the static web console (`/` and `/console/<asset>`, api/console.py).
ROOT_ROUTES = {("GET", "/health"), ("GET", "/healthz"), ("GET", "/")}
ROOT_ROUTE_PREFIXES = ("/console/",)
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
PROBLEM_REF = "#/components/schemas/ErrorResponse"


def registered_routes(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, canonical path) of every route; the implicit HEAD of each GET is left out."""
    found: set[tuple[str, str]] = set()
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        found.add((route.method, route.resource.canonical))
    return found


def documented_operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method, path, operation


def iter_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from iter_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_refs(item)


def test_the_document_is_valid_openapi_3_1() -> None:
    document = build_document(PREFIX)
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_a_broken_document_is_caught_by_the_validator() -> None:
    """The validator really checks (a guard against a validator that accepts anything)."""
    document = build_document(PREFIX)
    document["components"]["parameters"]["ChatId"]["in"] = "body"
    with pytest.raises(OpenAPIValidationError):
        validate(document)


def test_every_reference_resolves() -> None:
    document = build_document(PREFIX)
    for ref in set(iter_refs(document)):
        assert ref.startswith("#/components/"), ref
        node: Any = document
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(node, dict) and part in node, f"unresolved {ref}"
            node = node[part]


def test_paths_are_relative_to_the_prefix_as_in_the_original() -> None:
    document = build_document(PREFIX)
    assert document["servers"] == [{"url": PREFIX}]
    # `/metrics` (Prometheus) is the one extension outside `/v1`.
    assert all(path.startswith("/v1/") or path == "/metrics" for path in document["paths"])
    assert "/v1/chats/{id}/messages:stream" in document["paths"]
    assert build_document("/chat-api/")["servers"] == [{"url": "/chat-api"}]


async def test_served_document_is_the_built_one(aiohttp_client: Any, app_config: Config) -> None:
    client = await aiohttp_client(create_app(app_config))
    response = await client.get(f"{PREFIX}/v1/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    body = await response.read()
    assert await response.json() == build_document(PREFIX, app_config.auth)
    # Built once at start-up: every request is answered with the same pre-encoded bytes.
    assert body == client.app[OPENAPI_DOCUMENT_KEY]
    again = await client.get(f"{PREFIX}/v1/openapi.json")
    assert await again.read() == body


async def test_the_document_follows_the_configured_prefix(aiohttp_client: Any, app_config: Config) -> None:
    config = embedded_config(
        app_config.database.url, Path(app_config.server.data_dir), server={"url_prefix": "/chat-api"}
    )
    client = await aiohttp_client(create_app(config))
    response = await client.get("/chat-api/v1/openapi.json")
    assert response.status == 200
    assert (await response.json())["servers"] == [{"url": "/chat-api"}]


async def test_the_document_needs_credentials_like_every_route_under_the_prefix(
    aiohttp_client: Any, app_config: Config
) -> None:
    secret = "openapi-test-secret-that-is-long-enough"
    config = embedded_config(
        app_config.database.url,
        Path(app_config.server.data_dir),
        auth={"mode": "jwt", "jwt": {"secret": secret}},
    )
    client = await aiohttp_client(create_app(config))
    response = await client.get(f"{PREFIX}/v1/openapi.json")
    assert response.status == 401
    assert response.content_type == "application/problem+json"
    assert (await response.json())["code"] == "unauthorized"
    claims = {
        "tenant_id": "00000000-df51-5b42-9538-d2b56b7ee953",
        "sub": "11111111-6a88-4768-9dfc-6bcd5187d9ed",
        "exp": dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
    }
    token = jwt.encode(claims, secret, algorithm="HS256")
    response = await client.get(f"{PREFIX}/v1/openapi.json", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200
    document = await response.json()
    assert document["security"] == [{"bearerAuth": []}]


def test_security_follows_the_auth_mode() -> None:
    assert build_document(PREFIX, AuthConfig(mode="dev"))["security"] == []
    assert build_document(PREFIX)["security"] == [{"bearerAuth": []}]
    auth = AuthConfig(mode="trusted_headers", trusted_headers=TrustedHeadersConfig(tenant_header="X-T"))
    document = build_document(PREFIX, auth)
    assert document["security"] == [{"gatewaySecret": [], "tenantHeader": [], "userHeader": []}]
    schemes = document["components"]["securitySchemes"]
    tenant = schemes["tenantHeader"]
    assert (tenant["type"], tenant["in"], tenant["name"]) == ("apiKey", "header", "X-T")
    assert schemes["gatewaySecret"]["name"] == "X-Gateway-Secret"
    assert "bearerAuth" in schemes
    validate(document)


def test_every_registered_route_is_in_the_table_and_the_table_names_only_routed_operations(
    app_config: Config,
) -> None:
    routed = registered_routes(create_app(app_config))
    under_prefix = {(method, path) for method, path in routed if path.startswith(f"{PREFIX}/")}
    outside = {
        (method, path)
        for method, path in routed - under_prefix
        if (method, path) not in ROOT_ROUTES
        and not (method == "GET" and path.startswith(ROOT_ROUTE_PREFIXES))
    }
    assert outside == set(), "a route outside the prefix: document it or list it in ROOT_ROUTES"
    assert {("GET", "/health"), ("GET", "/healthz")} <= routed
    table = {(op.method.upper(), f"{PREFIX}{op.path}") for op in OPERATIONS}
    assert under_prefix - table == set(), "routes missing from OPERATIONS in api/openapi.py"
    assert table - under_prefix == set(), "OPERATIONS lists operations that no route serves"


def test_every_table_entry_is_in_the_document_once() -> None:
    document = build_document(PREFIX)
    documented = {(method, path) for method, path, _ in documented_operations(document)}
    assert documented == {(op.method, op.path) for op in OPERATIONS}
    operation_ids = [operation["operationId"] for _, _, operation in documented_operations(document)]
    assert len(operation_ids) == len(set(operation_ids))


def test_path_parameters_are_declared_for_every_template_name() -> None:
    document = build_document(PREFIX)
    parameters = document["components"]["parameters"]
    for path, item in document["paths"].items():
        declared = {parameters[ref["$ref"].rsplit("/", 1)[1]]["name"] for ref in item.get("parameters", [])}
        names = {op_name for op in OPERATIONS if op.path == path for op_name in op.path_parameters}
        assert declared == names, path
    for name in ("ChatId", "RequestId", "MessageId", "AttachmentId"):
        assert parameters[name]["schema"] == {"type": "string", "format": "uuid"}


def test_every_error_response_is_problem_json_with_a_required_code() -> None:
    document = build_document(PREFIX)
    problem = document["components"]["schemas"]["ErrorResponse"]
    assert {"type", "title", "status", "detail", "code"} <= set(problem["required"])
    for method, path, operation in documented_operations(document):
        statuses = set(operation["responses"])
        assert {"401", "500"} <= statuses, (method, path)
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            assert response["content"] == {"application/problem+json": {"schema": {"$ref": PROBLEM_REF}}}
            assert "Problem codes: `" in response["description"], (method, path, status)


def test_uuid_paths_and_json_bodies_document_their_framework_errors() -> None:
    document = build_document(PREFIX)
    operation = document["paths"]["/v1/chats/{id}"]["patch"]
    for status, code in (("400", "invalid_uuid"), ("400", "invalid_json"), ("415", "unsupported_media_type")):
        assert f"`{code}`" in operation["responses"][status]["description"]
    assert "`invalid_limit`" in document["paths"]["/v1/chats"]["get"]["responses"]["422"]["description"]


def test_stream_events_cover_the_sse_grammar_and_payload_structs() -> None:
    assert tuple(STREAM_EVENTS) == typing.get_args(events.SseEventName)
    assert set(STREAM_EVENTS.values()) == set(typing.get_args(events.SsePayload))
    document = build_document(PREFIX)
    streamed = [
        (path, method)
        for method, path, operation in documented_operations(document)
        if "text/event-stream" in operation["responses"].get("200", {}).get("content", {})
    ]
    assert sorted(streamed) == [
        ("/v1/chats/{id}/messages:stream", "post"),
        ("/v1/chats/{id}/turns/{request_id}", "patch"),
        ("/v1/chats/{id}/turns/{request_id}/retry", "post"),
    ]
    schema = document["paths"]["/v1/chats/{id}/messages:stream"]["post"]["responses"]["200"]["content"][
        "text/event-stream"
    ]["schema"]
    names = [variant["properties"]["event"]["const"] for variant in schema["oneOf"]]
    assert names == list(STREAM_EVENTS)
    done = next(v for v in schema["oneOf"] if v["properties"]["event"]["const"] == "done")
    assert done["properties"]["data"]["contentSchema"] == {"$ref": "#/components/schemas/SseDoneEvent"}


def test_components_carry_published_names_and_datetime_formats() -> None:
    schemas = build_document(PREFIX)["components"]["schemas"]
    assert not [name for name in schemas if "." in name]
    assert not set(openapi.PUBLISHED_NAMES) & set(schemas), "a struct escaped its published name"
    for name, schema in schemas.items():
        assert schema["title"] == name
    assert schemas["ChatDetail"]["properties"]["created_at"] == {"type": "string", "format": "date-time"}
    assert {"type": "string", "format": "date-time"} in schemas["Attachment"]["properties"][
        "summary_updated_at"
    ]["anyOf"]
    assert schemas["SendMessageRequest"]["additionalProperties"] is False


def test_upload_is_multipart_with_a_file_part() -> None:
    operation = build_document(PREFIX)["paths"]["/v1/chats/{id}/attachments"]["post"]
    body = operation["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"]["required"] == ["file"]
    assert body["schema"]["properties"]["file"]["format"] == "binary"
    assert "201" in operation["responses"]
