"""Schemathesis against the served document: the app runs on a loopback port (local provider, dev identity;
SQLite and PostgreSQL) and every operation of `{prefix}/v1/openapi.json` gets a bounded, deterministic run
of generated requests, valid and invalid (examples, coverage and fuzzing phases; fixed seed, derandomized).

Checks on every response: no 5xx; the status and content type are documented; the body and headers conform
to the documented schema — the SSE operations are fuzzed like the others and every event of each stream
is validated against its payload schema; a request the document calls invalid is rejected with a 4xx; and
every 4xx/5xx body is problem+json with a non-empty `code` and no stack trace.

So that generated requests reach more than 404s, path parameters are, in half of the generated cases,
replaced by real ids: a chat with a completed turn (its request_id and assistant message) and an attachment
linked to that turn. DELETE of the chat itself keeps its generated id so the chat survives for the others.

The schema object is built in-process from `build_document` and the `target` fixture asserts that the app
serves exactly that document (schemathesis' fixture-based lazy loader does not work with pytest 9.2).
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import hypothesis.strategies as st
import pg
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from minichat_host.api.openapi import build_document
from minichat_host.app import create_app
from minichat_host.config import AuthConfig
from openapi.conftest import PREFIX, embedded_config
from openapi.server import live_server

SEED = 20261122
MAX_EXAMPLES = 25
TIMEOUT_SECONDS = 30
MAX_STREAM_EVENTS = 100_000
STACK_TRACE_MARKER = "Traceback (most recent call last)"


@schemathesis.check
def problem_json_with_code(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Any
) -> None:
    """Every error body is problem+json with a machine `code`, and never a stack trace."""
    text = response.text
    assert STACK_TRACE_MARKER not in text, f"stack trace in the body: {text[:500]}"
    if response.status_code < 400:
        return
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.split(";")[0].strip() == "application/problem+json", f"error as {content_type!r}"
    body = json.loads(text)
    assert isinstance(body, dict), body
    assert isinstance(body.get("code"), str) and body["code"], f"no code: {body}"
    assert body.get("status") == response.status_code, body
    for member in ("type", "title", "detail"):
        assert isinstance(body.get(member), str), f"no {member}: {body}"


def _seed_resources(base_url: str) -> dict[str, str]:
    """A chat with one completed turn and a linked attachment; returns real ids per path parameter name."""
    api = f"{base_url}{PREFIX}/v1"
    session = requests.Session()
    chat = session.post(f"{api}/chats", json={"title": "fuzz"}, timeout=TIMEOUT_SECONDS)
    assert chat.status_code == 201, chat.text
    chat_id = chat.json()["id"]
    upload = session.post(
        f"{api}/chats/{chat_id}/attachments",
        files={"file": ("notes.txt", b"The fuzz attachment says hello.\n", "text/plain")},
        timeout=TIMEOUT_SECONDS,
    )
    assert upload.status_code == 201, upload.text
    attachment_id = upload.json()["id"]
    request_id = str(uuid.uuid4())
    stream = session.post(
        f"{api}/chats/{chat_id}/messages:stream",
        json={
            "content": "hello",
            "request_id": request_id,
            "attachment_ids": [attachment_id],
        },
        timeout=TIMEOUT_SECONDS,
    )
    assert stream.status_code == 200 and "event: done" in stream.text, stream.text
    messages = session.get(f"{api}/chats/{chat_id}/messages", timeout=TIMEOUT_SECONDS).json()["items"]
    assistant = next(m["id"] for m in messages if m["role"] == "assistant")
    model_id = session.get(f"{api}/models", timeout=TIMEOUT_SECONDS).json()["items"][0]["model_id"]
    return {
        "id": chat_id,
        "request_id": request_id,
        "msg_id": assistant,
        "attachment_id": attachment_id,
        "model_id": model_id,
    }


# Ids of real resources, filled by the `target` fixture before any case is generated.
REAL_IDS: dict[str, str] = {}

# The document the app serves (`target` asserts that the served one is exactly this).
schema = schemathesis.openapi.from_dict(
    build_document(PREFIX, AuthConfig()),
    config=schemathesis.Config.from_dict(
        {
            "seed": SEED,
            # Read every stream to its terminal event, so every event is validated (the default stops at 20).
            "max-stream-events": MAX_STREAM_EVENTS,
            "phases": {"stateful": {"enabled": False}},
            "generation": {"max-examples": MAX_EXAMPLES, "mode": "all"},
        }
    ),
)


@schema.hook
def flatmap_path_parameters(context: schemathesis.HookContext, path_parameters: Any) -> Any:
    operation = context.operation
    if not path_parameters or operation is None:
        return st.just(path_parameters)
    if operation.method.upper() == "DELETE" and operation.path == "/v1/chats/{id}":
        return st.just(path_parameters)
    real = {name: REAL_IDS[name] for name in path_parameters if name in REAL_IDS}
    return st.sampled_from([path_parameters, {**path_parameters, **real}])


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzz_db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database shared by every operation's run, on each engine."""
    if request.param == "sqlite":
        database = tmp_path_factory.mktemp("fuzz-db") / "minichat.db"
        shutil.copyfile(request.getfixturevalue("_sqlite_template"), database)
        yield f"sqlite+aiosqlite:///{database}"
        return
    server = request.getfixturevalue("pg_server")
    name = pg.new_database_name("fuzz")
    url = pg.create_database(server, name, template=request.getfixturevalue("_pg_template"))
    try:
        yield url
    finally:
        pg.drop_database(server, name)


@pytest.fixture(scope="module")
def target(fuzz_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of the API (prefix included) of one app shared by every operation's run."""
    data_dir = tmp_path_factory.mktemp("fuzz-data")
    config = embedded_config(fuzz_db_url, data_dir)
    with live_server(create_app(config)) as server:
        served = requests.get(f"{server.base_url}{PREFIX}/v1/openapi.json", timeout=TIMEOUT_SECONDS)
        assert served.json() == schema.raw_schema, "the fuzzed document is not the served one"
        REAL_IDS.update(_seed_resources(server.base_url))
        yield f"{server.base_url}{PREFIX}"
    REAL_IDS.clear()


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_conforms_to_the_served_document(case: schemathesis.Case[Any], target: str) -> None:
    case.call_and_validate(
        base_url=target,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            response_headers_conformance,
            problem_json_with_code,
            negative_data_rejection,
        ],
        timeout=TIMEOUT_SECONDS,
    )
