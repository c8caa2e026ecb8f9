"""Outbox admin endpoints and `/metrics`: dead letters listed, inspected, replayed and discarded over HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

from api.helpers import PREFIX, ClientFactory, ClientT, expect_problem
from minichat_host import constants
from minichat_host.api.admin import ADMIN_OUTBOX_KEY

ADMIN = f"{PREFIX}/admin/outbox"


async def _dead_letter_ids(client: ClientT, expected: int, status: str = "pending") -> list[int]:
    """Poll until the scheduler has rejected `expected` messages to dead letters."""
    for _ in range(200):
        response = await client.get(f"{ADMIN}/dead-letters", params={"status": status})
        assert response.status == 200
        items = (await response.json())["items"]
        if len(items) >= expected:
            return [item["id"] for item in items]
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {expected} {status} dead letters")


async def _enqueue_garbage(client: ClientT, count: int) -> None:
    """Usage events that cannot be decoded: the usage handler rejects them to dead letters."""
    outbox = client.app[ADMIN_OUTBOX_KEY]
    async with outbox.transaction() as tx:
        for i in range(count):
            await tx.enqueue(constants.QUEUE_USAGE, f"tenant-{i}", {"not": "a usage event", "n": i})


async def test_dead_letters_list_show_replay_discard_and_metrics(make_client: ClientFactory) -> None:
    client = await make_client(outbox={"poll_interval_seconds": 0.05})
    await _enqueue_garbage(client, 2)
    first, second = sorted(await _dead_letter_ids(client, 2))

    shown = await client.get(f"{ADMIN}/dead-letters/{first}")
    body: dict[str, Any] = await shown.json()
    assert shown.status == 200
    assert body["queue"] == constants.QUEUE_USAGE
    assert body["status"] == "pending"
    assert body["payload_json"]["not"] == "a usage event"
    assert body["last_error"] and body["payload_base64"]

    status = await client.get(f"{ADMIN}/status")
    rows = (await status.json())["items"]
    assert {row["queue"] for row in rows} >= {constants.QUEUE_USAGE, constants.QUEUE_AUDIT}
    assert sum(row["dead_letters"] for row in rows if row["queue"] == constants.QUEUE_USAGE) == 2

    metrics = await client.get("/mini-chat/metrics")
    text = await metrics.text()
    assert metrics.status == 200
    assert metrics.content_type == "text/plain"
    assert f'minichat_outbox_dead_lettered_total{{queue="{constants.QUEUE_USAGE}"}} 2.0' in text
    assert "minichat_outbox_backlog" in text

    discarded = await client.post(f"{ADMIN}/dead-letters/{second}/discard")
    assert (discarded.status, (await discarded.json())["action"]) == (200, "discarded")
    await expect_problem(
        await client.post(f"{ADMIN}/dead-letters/{second}/discard"), 409, "dead_letter_not_pending"
    )

    # Replay puts it back at the end of its partition; it is still garbage, so it dead-letters again.
    replayed = await client.post(f"{ADMIN}/dead-letters/{first}/replay")
    assert (replayed.status, (await replayed.json())["action"]) == (200, "replayed")
    resolved = await client.get(f"{ADMIN}/dead-letters/{first}")
    assert (await resolved.json())["status"] == "resolved"
    again = await _dead_letter_ids(client, 1)
    assert first not in again and second not in again

    everything = await client.get(f"{ADMIN}/dead-letters", params={"status": "all"})
    assert len((await everything.json())["items"]) == 3


async def test_admin_errors_are_problems(make_client: ClientFactory) -> None:
    client = await make_client()
    await expect_problem(await client.get(f"{ADMIN}/dead-letters/999999"), 404, "dead_letter_not_found")
    await expect_problem(
        await client.post(f"{ADMIN}/dead-letters/999999/replay"), 404, "dead_letter_not_found"
    )
    await expect_problem(await client.get(f"{ADMIN}/dead-letters/abc"), 400, "invalid_id")
    await expect_problem(
        await client.get(f"{ADMIN}/dead-letters", params={"status": "x"}), 400, "invalid_status"
    )
    await expect_problem(
        await client.get(f"{ADMIN}/dead-letters", params={"limit": "0"}), 400, "invalid_limit"
    )


async def test_admin_endpoints_need_the_admin_role(make_client: ClientFactory) -> None:
    client = await make_client(auth={"dev_is_admin": False})
    for path in ("/status", "/dead-letters", "/dead-letters/1"):
        await expect_problem(await client.get(f"{ADMIN}{path}"), 403, "forbidden")
    for action in ("replay", "discard"):
        await expect_problem(await client.post(f"{ADMIN}/dead-letters/1/{action}"), 403, "forbidden")
