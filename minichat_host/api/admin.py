"""Operator endpoints: outbox status and dead letters (admin role), and Prometheus `/metrics`.

Paths (under the prefix):
  GET  /v1/admin/outbox/status                       per queue and partition: backlog, lease, attempts, errors
  GET  /v1/admin/outbox/dead-letters?queue=&status=&limit=
  GET  /v1/admin/outbox/dead-letters/{id}
  POST /v1/admin/outbox/dead-letters/{id}/replay     back at the end of its partition, then resolved
  POST /v1/admin/outbox/dead-letters/{id}/discard    pending → discarded
  GET  /metrics                                      Prometheus text format (any authenticated caller)
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any, Final, Literal

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from minichat_host.api.problems import ProblemError, json_response
from minichat_host.auth import require_admin
from minichat_host.outbox import DeadLetter, Outbox, QueueStatus
from minichat_host.outbox.models import DeadLetterStatus

ADMIN_OUTBOX_KEY: Final = web.AppKey("admin_outbox", Outbox)
METRICS_REGISTRY_KEY: Final = web.AppKey("metrics_registry", CollectorRegistry)

_STATUSES = ("pending", "reprocessing", "resolved", "discarded", "all")


class OutboxStatusPage(msgspec.Struct):
    items: list[QueueStatus]


class DeadLetterView(msgspec.Struct, omit_defaults=True):
    id: int
    queue: str
    partition: int
    seq: int
    payload_type: str
    payload_base64: str
    created_at: dt.datetime
    failed_at: dt.datetime
    last_error: str
    attempts: int
    status: str
    payload_json: Any = None  # the payload decoded, when it is JSON
    completed_at: dt.datetime | None = None


class DeadLetterPage(msgspec.Struct):
    items: list[DeadLetterView]


class DeadLetterAction(msgspec.Struct):
    id: int
    action: Literal["replayed", "discarded"]


def _view(letter: DeadLetter) -> DeadLetterView:
    try:
        parsed: Any = msgspec.json.decode(letter.payload)
    except msgspec.DecodeError:
        parsed = None
    return DeadLetterView(
        id=letter.id,
        queue=letter.queue,
        partition=letter.partition,
        seq=letter.seq,
        payload_type=letter.payload_type,
        payload_base64=base64.b64encode(letter.payload).decode(),
        payload_json=parsed,
        created_at=letter.created_at,
        failed_at=letter.failed_at,
        last_error=letter.last_error,
        attempts=letter.attempts,
        status=letter.status,
        completed_at=letter.completed_at,
    )


def _dead_letter_id(request: web.Request) -> int:
    raw = request.match_info["dead_letter_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise ProblemError(400, "invalid_id", "Dead-letter ids are positive integers")
    return int(raw)


async def outbox_status(request: web.Request) -> web.Response:
    require_admin(request)
    return json_response(OutboxStatusPage(items=await request.app[ADMIN_OUTBOX_KEY].status()))


async def list_dead_letters(request: web.Request) -> web.Response:
    require_admin(request)
    status = request.query.get("status", "pending")
    if status not in _STATUSES:
        raise ProblemError(400, "invalid_status", f"status must be one of {', '.join(_STATUSES)}")
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise ProblemError(400, "invalid_limit", "limit must be an integer") from None
    if not 1 <= limit <= 1000:
        raise ProblemError(400, "invalid_limit", "limit must be between 1 and 1000")
    chosen: DeadLetterStatus | None = None if status == "all" else status  # type: ignore[assignment]
    letters = await request.app[ADMIN_OUTBOX_KEY].dead_letters.list(request.query.get("queue"), chosen, limit)
    return json_response(DeadLetterPage(items=[_view(letter) for letter in letters]))


async def get_dead_letter(request: web.Request) -> web.Response:
    require_admin(request)
    letter = await request.app[ADMIN_OUTBOX_KEY].dead_letters.get(_dead_letter_id(request))
    if letter is None:
        raise ProblemError(404, "dead_letter_not_found", "No such dead letter")
    return json_response(_view(letter))


async def _act(request: web.Request, action: Literal["replayed", "discarded"]) -> web.Response:
    require_admin(request)
    dead_letters = request.app[ADMIN_OUTBOX_KEY].dead_letters
    letter_id = _dead_letter_id(request)
    letter = await dead_letters.get(letter_id)
    if letter is None:
        raise ProblemError(404, "dead_letter_not_found", "No such dead letter")
    if letter.status != "pending":
        raise ProblemError(
            409, "dead_letter_not_pending", f"Dead letter {letter_id} is {letter.status}, not pending"
        )
    done = (
        [d.id for d in await dead_letters.replay([letter_id])]
        if action == "replayed"
        else await dead_letters.discard([letter_id])
    )
    if letter_id not in done:
        raise ProblemError(409, "dead_letter_not_pending", f"Dead letter {letter_id} was taken concurrently")
    return json_response(DeadLetterAction(id=letter_id, action=action))


async def replay_dead_letter(request: web.Request) -> web.Response:
    return await _act(request, "replayed")


async def discard_dead_letter(request: web.Request) -> web.Response:
    return await _act(request, "discarded")


async def metrics(request: web.Request) -> web.Response:
    outbox = request.app[ADMIN_OUTBOX_KEY]
    await outbox.refresh_metrics()
    body = generate_latest(request.app[METRICS_REGISTRY_KEY])
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def register(app: web.Application, prefix: str) -> None:
    base = f"{prefix}/v1/admin/outbox"
    app.router.add_get(f"{base}/status", outbox_status)
    app.router.add_get(f"{base}/dead-letters", list_dead_letters)
    app.router.add_get(f"{base}/dead-letters/{{dead_letter_id}}", get_dead_letter)
    app.router.add_post(f"{base}/dead-letters/{{dead_letter_id}}/replay", replay_dead_letter)
    app.router.add_post(f"{base}/dead-letters/{{dead_letter_id}}/discard", discard_dead_letter)
    app.router.add_get(f"{prefix}/metrics", metrics)
