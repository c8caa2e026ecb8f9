"""The quota cascade through the API (invariant 12), done.quota_warnings, and context assembly wiring:
history within the snapshot boundary and after the summary frontier, the budget, and the provider request
(invariant 15)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

from fakes.openai_server import Script

from minichat_host.db.repos import turns as turns_repo
from minichat_host.db.tables import messages, quota_usage, thread_summaries
from minichat_host.plugins.types import KillSwitches, TierLimits
from turns.conftest import PREFIX, TENANT, USER, Harness, utc_now


def tier_limits(amount: int) -> TierLimits:
    return TierLimits(limit_daily_credits_micro=amount, limit_monthly_credits_micro=amount)


async def test_premium_exhausted_downgrades_to_standard(harness: Harness) -> None:
    harness.recorder.premium = tier_limits(1)
    chat_id = await harness.create_chat("local-premium")
    request_id = str(uuid.uuid4())
    streamed = await harness.stream(chat_id, {"content": "hi", "request_id": request_id})
    done = streamed.terminal.data
    assert done["quota_decision"] == "downgrade"
    assert (done["effective_model"], done["selected_model"]) == ("local-standard", "local-premium")
    assert (done["downgrade_from"], done["downgrade_reason"]) == ("local-premium", "premium_quota_exhausted")
    assert {key[2] for key in await harness.usage_rows()} == {"total"}  # the standard tier's bucket only
    turn = await harness.turn_row(chat_id, request_id)
    assert (turn.effective_model, turn.quota_decision, turn.downgrade_reason) == (
        "local-standard",
        "downgrade",
        "premium_quota_exhausted",
    )
    replay = await harness.stream(chat_id, {"content": "hi", "request_id": request_id})
    assert replay.terminal.data["downgrade_reason"] == "premium_quota_exhausted"
    await harness.delivered(1)
    audit = harness.recorder.turn_audits()[0]
    assert audit.policy_decisions.quota.decision == "downgrade"


async def test_kill_switch_downgrade_reason(harness: Harness) -> None:
    harness.recorder.kill_switches = KillSwitches(force_standard_tier=True)
    chat_id = await harness.create_chat("local-premium")
    done = (await harness.stream(chat_id, {"content": "hi"})).terminal.data
    assert (done["quota_decision"], done["downgrade_reason"]) == ("downgrade", "force_standard_tier")


async def test_standard_never_escalates(harness: Harness) -> None:
    harness.recorder.standard = tier_limits(1)
    chat_id = await harness.create_chat("local-standard")
    response = await harness.client.post(f"{PREFIX}/chats/{chat_id}/messages:stream", json={"content": "hi"})
    body = await response.json(content_type=None)
    assert (response.status, body["code"], body["quota_scope"]) == (429, "quota_exceeded", "tokens")
    assert await harness.counts() == {"turns": 0, "messages": 0, "quota_rows": 0, "outbox": 0}


async def test_daily_web_search_quota(harness: Harness) -> None:
    chat_id = await harness.create_chat("local-standard")
    today = utc_now().date()
    await harness.db.execute(
        quota_usage.insert().values(
            id=uuid.uuid4(),
            tenant_id=TENANT,
            user_id=USER,
            period_type="daily",
            period_start=today,
            bucket="total",
            web_search_calls=75,
            updated_at=utc_now(),
        )
    )
    response = await harness.client.post(
        f"{PREFIX}/chats/{chat_id}/messages:stream", json={"content": "hi", "web_search": {"enabled": True}}
    )
    body = await response.json(content_type=None)
    assert (response.status, body["quota_scope"]) == (429, "web_search")
    # Without web search the user can still chat.
    assert (await harness.stream(chat_id, {"content": "hi"})).terminal.event == "done"


async def test_quota_warnings_in_done(harness: Harness) -> None:
    chat_id = await harness.create_chat("fake-standard")
    harness.fake.default_script = Script(text="ok", input_tokens=100, output_tokens=900)
    first = (await harness.stream(chat_id, {"content": "hi"})).terminal.data
    assert first["quota_warnings"] == []
    # Each turn costs 100 + 3 * 900 = 2800; the second reserves 4112 (prior context 1000 tokens). A limit of
    # 7000 admits it and leaves 1400 (20 %) afterwards: a warning, not exhausted.
    harness.recorder.standard = tier_limits(7000)
    second = (await harness.stream(chat_id, {"content": "hi"})).terminal.data
    warnings = second["quota_warnings"]
    assert {(w["tier"], w["period"]) for w in warnings} == {("total", "daily"), ("total", "monthly")}
    assert all(w["warning"] and not w["exhausted"] and w["remaining_percentage"] == 20 for w in warnings)
    assert all(w["next_reset"].endswith("Z") for w in warnings)
    status = await (await harness.client.get(f"{PREFIX}/quota/status")).json()
    total = next(t for t in status["tiers"] if t["tier"] == "total")
    assert all(p["used_credits_micro"] == 5600 for p in total["periods"])


async def _history(harness: Harness, chat_id: str, texts: list[str]) -> None:
    for text in texts:
        assert (await harness.stream(chat_id, {"content": text})).terminal.event == "done"


def sent_texts(body: dict[str, Any]) -> list[tuple[str, str]]:
    result = []
    for item in body["input"]:
        content = item["content"]
        text = content if isinstance(content, str) else " ".join(part.get("text", "") for part in content)
        result.append((item["role"], text))
    return result


async def test_provider_request_and_history(make_harness: Any) -> None:
    harness: Harness = await make_harness(context={"recent_messages_limit": 4})
    chat_id = await harness.create_chat("fake-standard")
    harness.recorder.set_model("fake-standard", system_prompt="Be brief.")
    harness.fake.default_script = Script(text="ack")
    await _history(harness, chat_id, ["first", "second", "third"])
    await harness.stream(chat_id, {"content": "fourth"})
    body = harness.fake.last("responses").body
    assert body["model"] == "gpt-test"
    assert body["max_output_tokens"] == 1000
    assert body["instructions"] == "Be brief."
    assert body["user"] == f"{TENANT}:{USER}"
    # The newest 4 history rows (2 turns) oldest first, then the current message.
    assert sent_texts(body) == [
        ("user", "second"),
        ("assistant", "ack"),
        ("user", "third"),
        ("assistant", "ack"),
        ("user", "fourth"),
    ]


async def test_summary_frontier_and_compressed_rows(harness: Harness) -> None:
    chat_id = await harness.create_chat("fake-standard")
    harness.fake.default_script = Script(text="ack")
    await _history(harness, chat_id, ["old one", "old two", "recent"])
    rows = await harness.db.fetch_all(
        messages.select()
        .where(messages.c.chat_id == uuid.UUID(chat_id))
        .order_by(messages.c.created_at, messages.c.id)
    )
    frontier = rows[1]  # the assistant answer to "old one"
    now = utc_now()
    await harness.db.execute(
        thread_summaries.insert().values(
            id=uuid.uuid4(),
            tenant_id=TENANT,
            chat_id=uuid.UUID(chat_id),
            summary_text="They said old one.",
            summarized_up_to_message_id=frontier["id"],
            summarized_up_to_created_at=frontier["created_at"],
            token_estimate=12,
            created_at=now,
            updated_at=now,
        )
    )
    await harness.db.execute(
        messages.update().where(messages.c.id == rows[3]["id"]).values(is_compressed=True)
    )
    streamed = await harness.stream(chat_id, {"content": "now"})
    assert streamed.frames[0].data["thread_summary_applied"] == {"token_estimate": 12}
    texts = sent_texts(harness.fake.last("responses").body)
    assert texts[0][0] == "user" and "They said old one." in texts[0][1]
    assert [t for _, t in texts[1:]] == ["old two", "recent", "ack", "now"]  # rows[3] is compressed


async def test_budget_drops_oldest_history_first(harness: Harness) -> None:
    harness.recorder.set_model("fake-standard", context_window=2400, max_output_tokens=1000)
    chat_id = await harness.create_chat("fake-standard")
    harness.fake.default_script = Script(text="ok")
    await _history(harness, chat_id, ["A" * 1200, "B" * 1200, "C" * 1200])
    await harness.stream(chat_id, {"content": "D"})
    texts = [t for _, t in sent_texts(harness.fake.last("responses").body)]
    assert texts[-1] == "D"
    assert "A" * 1200 not in texts and "C" * 1200 in texts


async def test_current_message_is_never_its_own_history(harness: Harness) -> None:
    # A row dated after the new user message (clock skew) moves the boundary past it; the current message
    # must still appear once, and rows without a request_id never reach the model.
    chat_id = await harness.create_chat("fake-standard")
    harness.fake.default_script = Script(text="ok")
    future = utc_now() + dt.timedelta(hours=1)
    await harness.db.execute(
        messages.insert().values(
            id=uuid.uuid4(),
            tenant_id=TENANT,
            chat_id=uuid.UUID(chat_id),
            request_id=None,
            role="user",
            content="no request id",
            created_at=future,
        )
    )
    await harness.stream(chat_id, {"content": "hello"})
    texts = [t for _, t in sent_texts(harness.fake.last("responses").body)]
    assert texts == ["hello"]


async def test_history_query_respects_boundary_frontier_and_limit(harness: Harness) -> None:
    chat_id = uuid.UUID(await harness.create_chat())
    base = utc_now() - dt.timedelta(minutes=10)
    ids = []
    for index in range(6):
        message_id = uuid.uuid4()
        ids.append(message_id)
        await harness.db.execute(
            messages.insert().values(
                id=message_id,
                tenant_id=TENANT,
                chat_id=chat_id,
                request_id=uuid.uuid4(),
                role="user" if index % 2 == 0 else "assistant",
                content=f"m{index}",
                created_at=base + dt.timedelta(seconds=index),
                deleted_at=utc_now() if index == 2 else None,
            )
        )
    boundary = turns_repo.Boundary(base + dt.timedelta(seconds=4), ids[4])
    frontier = turns_repo.Boundary(base, ids[0])
    rows = await turns_repo.context_history(
        harness.db, chat_id, boundary=boundary, frontier=frontier, limit=10
    )
    assert [r.content for r in rows] == ["m1", "m3", "m4"]  # after the frontier, at/before the boundary, live
    rows = await turns_repo.context_history(harness.db, chat_id, boundary=boundary, frontier=None, limit=2)
    assert [r.content for r in rows] == ["m3", "m4"]
    assert await turns_repo.context_history(harness.db, chat_id, boundary=None, frontier=None, limit=10) == []


async def test_history_cut_at_the_frontier_equals_the_frontier_query(harness: Harness) -> None:
    # PostgreSQL reads the summary and the history at once and cuts the history at the frontier afterwards
    # (TurnService._summary_and_history): it must give the rows the frontier's own query gives, ties on
    # created_at included, for every frontier position and limit.
    chat_id = uuid.UUID(await harness.create_chat())
    base = utc_now() - dt.timedelta(minutes=10)
    stamps = [base, base, base + dt.timedelta(seconds=1), base + dt.timedelta(seconds=1), base]
    stamps += [base + dt.timedelta(seconds=2)] * 3
    for index, created_at in enumerate(stamps):
        await harness.db.execute(
            messages.insert().values(
                id=uuid.uuid4(),
                tenant_id=TENANT,
                chat_id=chat_id,
                request_id=uuid.uuid4(),
                role="user" if index % 2 == 0 else "assistant",
                content=f"m{index}",
                created_at=created_at,
            )
        )
    everything = await turns_repo.context_history(
        harness.db,
        chat_id,
        boundary=turns_repo.Boundary(base + dt.timedelta(hours=1), uuid.UUID(int=0)),
        frontier=None,
        limit=100,
    )
    assert len(everything) == len(stamps)
    boundary = turns_repo.Boundary(everything[-2].created_at, everything[-2].id)
    for position in everything:
        frontier = turns_repo.Boundary(position.created_at, position.id)
        for limit in (1, 2, 3, 5, 100):
            by_query = await turns_repo.context_history(
                harness.db, chat_id, boundary=boundary, frontier=frontier, limit=limit
            )
            unfiltered = await turns_repo.context_history(
                harness.db, chat_id, boundary=boundary, frontier=None, limit=limit
            )
            cut = turns_repo.after_position(unfiltered, frontier)
            assert [r.id for r in cut] == [r.id for r in by_query], (position.content, limit)


async def test_concurrent_sends_of_one_user_never_reserve_past_the_limit(harness: Harness) -> None:
    """Four sends of one user at once, in four chats, with credits for one turn: one streams, three are
    refused, and only one request reaches the provider (the decision is made on the quota rows locked by
    the send's transaction: `BEGIN IMMEDIATE` on SQLite, `FOR UPDATE` on PostgreSQL)."""
    chats = [await harness.create_chat("fake-standard") for _ in range(4)]
    harness.fake.default_script = Script(text="ok", input_tokens=10, output_tokens=10)
    # A fresh chat's turn reserves ~3,000 credits (1,000 output tokens at 3, and its input): one fits in
    # 5,000, two do not.
    harness.recorder.standard = tier_limits(5000)
    before = len(harness.fake.requests)

    async def send(chat_id: str) -> tuple[int, str]:
        response = await harness.client.post(
            f"{PREFIX}/chats/{chat_id}/messages:stream", json={"content": "hi"}
        )
        body = await response.text()
        return response.status, body

    # All four are held at the policy's limits (read before the quota decision), then let go together.
    arrived, gate = harness.recorder.hold_limits(len(chats))
    sends = [asyncio.ensure_future(send(chat_id)) for chat_id in chats]
    async with asyncio.timeout(10):
        await arrived.wait()
    gate.set()
    results = await asyncio.gather(*sends)
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 429, 429, 429], results
    assert all('"quota_exceeded"' in body for status, body in results if status == 429)
    assert len(harness.fake.requests) - before == 1
    await harness.wait_idle()
    assert await harness.reserved() == 0
    status = await (await harness.client.get(f"{PREFIX}/quota/status")).json()
    total = next(t for t in status["tiers"] if t["tier"] == "total")
    assert all(p["used_credits_micro"] == 10 + 3 * 10 for p in total["periods"])
