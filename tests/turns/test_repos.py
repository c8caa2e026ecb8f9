"""Repository behaviour on both engines: upserts, compare-and-set, unique-index conflicts, typed rows."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import databases
import pytest
import sqlalchemy as sa

from minichat_host.db.repos import quota_ledger, turns
from minichat_host.db.tables import (
    attachments,
    chat_turns,
    chat_vector_stores,
    chats,
    messages,
    quota_usage,
    thread_summaries,
)
from minichat_host.domain.models import BucketDelta, Period

TENANT = uuid.uuid4()
USER = uuid.uuid4()
NOW = dt.datetime(2026, 3, 5, 12, 0, tzinfo=dt.UTC)
PERIODS = [Period("daily", dt.date(2026, 3, 5)), Period("monthly", dt.date(2026, 3, 1))]


async def _chat(db: databases.Database) -> uuid.UUID:
    chat_id = uuid.uuid4()
    await db.execute(
        chats.insert().values(
            id=chat_id, tenant_id=TENANT, user_id=USER, model="m", created_at=NOW, updated_at=NOW
        )
    )
    return chat_id


async def _turn(db: databases.Database, chat_id: uuid.UUID, request_id: uuid.UUID | None = None) -> uuid.UUID:
    turn_id = uuid.uuid4()
    await turns.insert_turn(
        db,
        turn_id=turn_id,
        tenant_id=TENANT,
        chat_id=chat_id,
        request_id=request_id or uuid.uuid4(),
        requester_user_id=USER,
        web_search_enabled=False,
        now=NOW,
        preflight=None,
    )
    return turn_id


async def test_reserve_upsert_then_settle(database: databases.Database) -> None:
    deltas = [BucketDelta(p.period_type, p.period_start, "total", reserved_delta=1000) for p in PERIODS]
    await quota_ledger.apply_deltas(database, TENANT, USER, deltas, now=NOW)
    await quota_ledger.apply_deltas(database, TENANT, USER, deltas, now=NOW)
    rows = await quota_ledger.load_usage(database, TENANT, USER, PERIODS, for_update=True)
    assert {k: v.reserved_credits_micro for k, v in rows.items()} == {
        ("daily", dt.date(2026, 3, 5), "total"): 2000,
        ("monthly", dt.date(2026, 3, 1), "total"): 2000,
    }
    settle = [
        BucketDelta(
            p.period_type,
            p.period_start,
            "total",
            reserved_delta=-2000,
            spent_delta=1500,
            calls_delta=1,
            input_tokens_delta=100,
            output_tokens_delta=50,
            web_search_calls_delta=2,
        )
        for p in PERIODS
    ]
    await quota_ledger.apply_deltas(database, TENANT, USER, settle, now=NOW)
    rows = await quota_ledger.load_usage(database, TENANT, USER, PERIODS)
    for row in rows.values():
        assert (row.reserved_credits_micro, row.spent_credits_micro, row.web_search_calls) == (0, 1500, 2)
    assert await quota_ledger.reserved_total(database, TENANT, USER) == 0


async def test_one_statement_upsert_equals_row_by_row(database: databases.Database) -> None:
    # Non-negative deltas for several rows go in one statement; one at a time they take the row-by-row path.
    other = uuid.uuid4()
    deltas = [
        BucketDelta(p.period_type, p.period_start, bucket, reserved_delta=7 + n, spent_delta=n, calls_delta=1)
        for n, (p, bucket) in enumerate((p, b) for p in PERIODS for b in ("total", "premium"))
    ]
    for _ in range(2):  # the first call inserts, the second adds to the rows
        await quota_ledger.apply_deltas(database, TENANT, USER, deltas, now=NOW)
        for delta in deltas:
            await quota_ledger.apply_deltas(database, TENANT, other, [delta], now=NOW)
    kept = [c for c in quota_usage.c if c.name not in ("id", "user_id")]

    async def rows_of(user_id: uuid.UUID) -> list[tuple[object, ...]]:
        query = sa.select(*kept).where(quota_usage.c.user_id == user_id)
        return sorted(tuple(row) for row in await database.fetch_all(query.order_by(*kept[:4])))

    together = await rows_of(USER)
    assert len(together) == 4 and together == await rows_of(other)
    usage = await quota_ledger.load_usage(database, TENANT, USER, PERIODS)
    assert usage[("daily", dt.date(2026, 3, 5), "premium")].reserved_credits_micro == 2 * 8


async def test_release_never_goes_below_zero(database: databases.Database) -> None:
    period = PERIODS[0]
    await quota_ledger.apply_deltas(
        database,
        TENANT,
        USER,
        [BucketDelta(period.period_type, period.period_start, "total", reserved_delta=5)],
        now=NOW,
    )
    await quota_ledger.apply_deltas(
        database,
        TENANT,
        USER,
        [BucketDelta(period.period_type, period.period_start, "total", reserved_delta=-9, spent_delta=3)],
        now=NOW,
    )
    rows = await quota_ledger.load_usage(database, TENANT, USER, [period])
    assert rows[(period.period_type, period.period_start, "total")].reserved_credits_micro == 0


async def test_settlement_of_several_rows_equals_row_by_row(database: databases.Database) -> None:
    # Signed deltas for several rows: the existing rows change in one statement (the reserve clamped at
    # zero), the missing ones (a ledger repaired by hand) are upserted; one at a time they take the
    # row-by-row path. Another user's and another tenant's rows are left alone.
    keys = [(p, b) for p in PERIODS for b in ("total", "premium")]
    reserve = [BucketDelta(p.period_type, p.period_start, b, reserved_delta=100) for p, b in keys]
    settle = [
        BucketDelta(
            p.period_type,
            p.period_start,
            b,
            reserved_delta=-150 + 40 * n,  # -150 and -110 clamp at zero; -70 and -30 leave a reserve
            spent_delta=60 + n,
            calls_delta=1,
            input_tokens_delta=10 * n,
            output_tokens_delta=5,
            web_search_calls_delta=n,
            code_interpreter_calls_delta=1,
        )
        for n, (p, b) in enumerate(keys)
    ]
    one_by_one, bystander, elsewhere = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for user_id in (USER, one_by_one, bystander):
        await quota_ledger.apply_deltas(database, TENANT, user_id, reserve[:3], now=NOW)  # one row missing
    await quota_ledger.apply_deltas(database, elsewhere, USER, reserve, now=NOW)
    later = NOW + dt.timedelta(minutes=1)
    await quota_ledger.apply_deltas(database, TENANT, USER, settle, now=later)
    for delta in settle:
        await quota_ledger.apply_deltas(database, TENANT, one_by_one, [delta], now=later)
    kept = [c for c in quota_usage.c if c.name not in ("id", "tenant_id", "user_id")]

    async def rows_of(tenant_id: uuid.UUID, user_id: uuid.UUID) -> list[tuple[object, ...]]:
        query = sa.select(*kept).where(quota_usage.c.tenant_id == tenant_id, quota_usage.c.user_id == user_id)
        return sorted(tuple(row) for row in await database.fetch_all(query.order_by(*kept[:3])))

    settled = await rows_of(TENANT, USER)
    assert len(settled) == 4 and settled == await rows_of(TENANT, one_by_one)
    usage = await quota_ledger.load_usage(database, TENANT, USER, PERIODS)
    assert {key: row.reserved_credits_micro for key, row in usage.items()} == {
        ("daily", dt.date(2026, 3, 5), "total"): 0,
        ("daily", dt.date(2026, 3, 5), "premium"): 0,
        ("monthly", dt.date(2026, 3, 1), "total"): 30,
        ("monthly", dt.date(2026, 3, 1), "premium"): 0,  # missing before: inserted, its release clamped
    }
    assert sorted(row.spent_credits_micro for row in usage.values()) == [60, 61, 62, 63]
    for user_id, tenant_id in ((bystander, TENANT), (USER, elsewhere)):
        untouched = await quota_ledger.load_usage(database, tenant_id, user_id, PERIODS)
        assert {row.spent_credits_micro for row in untouched.values()} == {0}
        assert {row.reserved_credits_micro for row in untouched.values()} == {100}


async def test_turn_round_trip_and_cas(database: databases.Database) -> None:
    chat_id = await _chat(database)
    request_id = uuid.uuid4()
    turn_id = await _turn(database, chat_id, request_id)
    found = await turns.find_by_request(database, chat_id, request_id)
    assert found is not None and found.id == turn_id and found.state == "running"
    assert isinstance(found.id, uuid.UUID) and isinstance(found.request_id, uuid.UUID)
    assert found.started_at == NOW and found.started_at.tzinfo is not None
    assert (await turns.find_running(database, chat_id)) == found
    won = await turns.cas_finish(
        database,
        turn_id,
        state="completed",
        error_code=None,
        error_detail=None,
        provider_response_id="resp_1",
        now=NOW,
    )
    lost = await turns.cas_finish(
        database,
        turn_id,
        state="failed",
        error_code="x",
        error_detail=None,
        provider_response_id=None,
        now=NOW,
    )
    assert (won, lost) == (True, False)
    after = await turns.get_turn(database, turn_id)
    assert after is not None and after.state == "completed" and after.provider_response_id == "resp_1"


async def test_second_running_turn_and_reused_request_id_conflict(database: databases.Database) -> None:
    chat_id = await _chat(database)
    request_id = uuid.uuid4()
    await _turn(database, chat_id, request_id)
    with pytest.raises(turns.TurnConflict):
        await _turn(database, chat_id)
    with pytest.raises(turns.TurnConflict):
        async with database.transaction():
            await _turn(database, chat_id, request_id)


async def _attachment(db: databases.Database, chat_id: uuid.UUID, **columns: object) -> uuid.UUID:
    attachment_id = uuid.uuid4()
    values: dict[str, object] = {
        "id": attachment_id,
        "tenant_id": TENANT,
        "chat_id": chat_id,
        "uploaded_by_user_id": USER,
        "filename": "notes.txt",
        "content_type": "text/plain",
        "size_bytes": 10,
        "status": "ready",
        "attachment_kind": "document",
        "created_at": NOW,
        "updated_at": NOW,
    }
    await db.execute(attachments.insert().values({**values, **columns}))
    return attachment_id


async def test_first_look_reads_the_chat_and_its_flags_in_one_statement(database: databases.Database) -> None:
    chat_id, request_id = await _chat(database), uuid.uuid4()
    looked = await turns.first_look(database, TENANT, USER, chat_id, request_id)
    assert looked is not None
    assert (looked.chat.id, looked.chat.tenant_id, looked.chat.user_id) == (chat_id, TENANT, USER)
    assert looked == turns.FirstLook(looked.chat, False, False, False, None)
    # Another owner's chat, another tenant's, an unknown one and a deleted one are not found.
    for tenant_id, user_id, wanted in (
        (TENANT, uuid.uuid4(), chat_id),
        (uuid.uuid4(), USER, chat_id),
        (TENANT, USER, uuid.uuid4()),
    ):
        assert await turns.first_look(database, tenant_id, user_id, wanted, request_id) is None

    # Documents that are pending, deleted or images are not ready documents.
    await _attachment(database, chat_id, status="pending")
    await _attachment(database, chat_id, deleted_at=NOW)
    await _attachment(database, chat_id, attachment_kind="image", content_type="image/png")
    looked = await turns.first_look(database, TENANT, USER, chat_id, request_id)
    assert looked is not None and not looked.has_ready_documents
    await _attachment(database, chat_id)
    await database.execute(
        chat_vector_stores.insert().values(
            id=uuid.uuid4(),
            tenant_id=TENANT,
            chat_id=chat_id,
            vector_store_id="vs_1",
            provider="openai",
            created_at=NOW,
        )
    )
    turn_id = await _turn(database, chat_id, request_id)
    looked = await turns.first_look(database, TENANT, USER, chat_id, request_id)
    assert looked is not None
    assert looked == turns.FirstLook(looked.chat, True, True, True, "vs_1")
    # Another request id is unused; a finished turn no longer runs, and its request id stays used.
    looked = await turns.first_look(database, TENANT, USER, chat_id, uuid.uuid4())
    assert looked is not None and (looked.request_used, looked.turn_running) == (False, True)
    finished = await turns.cas_finish(
        database,
        turn_id,
        state="completed",
        error_code=None,
        error_detail=None,
        provider_response_id=None,
        now=NOW,
    )
    assert finished
    looked = await turns.first_look(database, TENANT, USER, chat_id, request_id)
    assert looked is not None and (looked.request_used, looked.turn_running) == (True, False)
    await database.execute(chats.update().where(chats.c.id == chat_id).values(deleted_at=NOW))
    assert await turns.first_look(database, TENANT, USER, chat_id, request_id) is None


async def _message(
    db: databases.Database, chat_id: uuid.UUID, at: dt.datetime, role: str = "user", **columns: object
) -> uuid.UUID:
    message_id = uuid.uuid4()
    values = {
        "id": message_id,
        "tenant_id": TENANT,
        "chat_id": chat_id,
        "request_id": uuid.uuid4(),
        "role": role,
        "content": "x",
        "created_at": at,
    }
    await db.execute(messages.insert().values({**values, **columns}))
    return message_id


async def test_first_look_reads_the_snapshot_boundary_and_the_prior_context_tokens(
    database: databases.Database,
) -> None:
    chat_id, request_id = await _chat(database), uuid.uuid4()
    looked = await turns.first_look(database, TENANT, USER, chat_id, request_id)
    assert looked is not None and (looked.boundary, looked.prior_context_tokens) == (None, 0)

    second = dt.timedelta(seconds=1)
    await _message(database, chat_id, NOW, "assistant", input_tokens=100, output_tokens=20)
    # The newest assistant message with tokens counts, not a newer one without, nor a deleted one.
    await _message(database, chat_id, NOW + second, "assistant", input_tokens=7, output_tokens=3)
    await _message(database, chat_id, NOW + 2 * second, "assistant")
    await _message(database, chat_id, NOW + 3 * second, "assistant", input_tokens=999, deleted_at=NOW)
    # The boundary is the newest live message by (created_at, id): of two at the same time, the larger id.
    tied = sorted([await _message(database, chat_id, NOW + 4 * second) for _ in range(2)])
    await _message(database, chat_id, NOW + 5 * second, deleted_at=NOW)
    # Another chat's messages are not this chat's.
    await _message(database, await _chat(database), NOW + 6 * second, "assistant", input_tokens=5)

    looked = await turns.first_look(database, TENANT, USER, chat_id, request_id)
    assert looked is not None
    assert looked.boundary == turns.Boundary(NOW + 4 * second, tied[1])
    assert looked.boundary.created_at.tzinfo is not None
    assert looked.prior_context_tokens == 10


async def test_first_look_reads_the_thread_summary_as_the_summary_read_does(
    database: databases.Database,
) -> None:
    chat_id, other_id, request_id = await _chat(database), await _chat(database), uuid.uuid4()
    looked = await turns.first_look(database, TENANT, USER, chat_id, request_id)
    assert looked is not None and looked.summary is None
    frontier = await _message(database, chat_id, NOW, "assistant")
    for chat, text in ((chat_id, "They said hello."), (other_id, "Another chat's.")):
        await database.execute(
            thread_summaries.insert().values(
                id=uuid.uuid4(),
                tenant_id=TENANT,
                chat_id=chat,
                summary_text=text,
                summarized_up_to_message_id=frontier,
                summarized_up_to_created_at=NOW,
                token_estimate=12,
                created_at=NOW,
                updated_at=NOW,
            )
        )
    looked = await turns.first_look(database, TENANT, USER, chat_id, request_id)
    assert looked is not None
    assert looked.summary == await turns.thread_summary(database, chat_id)
    assert looked.summary == turns.SummaryRow("They said hello.", 12, turns.Boundary(NOW, frontier))
    assert looked.summary.frontier.created_at.tzinfo is not None
    # The summary does not make another owner's chat visible.
    assert await turns.first_look(database, TENANT, uuid.uuid4(), chat_id, request_id) is None


async def test_owned_turn_status_reads_the_turn_with_the_owner_check(database: databases.Database) -> None:
    chat_id, request_id = await _chat(database), uuid.uuid4()
    assert await turns.owned_turn_status(database, TENANT, USER, chat_id, request_id) is None
    turn_id = await _turn(database, chat_id, request_id)
    row = await turns.find_by_request(database, chat_id, request_id)
    assert row is not None
    status = await turns.owned_turn_status(database, TENANT, USER, chat_id, request_id)
    assert status == turns.OwnedTurnStatus(
        requester_user_id=row.requester_user_id,
        state="running",
        error_code=None,
        assistant_message_id=None,
        updated_at=row.updated_at,
    )
    assert status is not None and status.updated_at.tzinfo is dt.UTC
    # Another owner, another tenant, another chat of the owner: nothing.
    other_chat = await _chat(database)
    for tenant_id, user_id, wanted in (
        (TENANT, uuid.uuid4(), chat_id),
        (uuid.uuid4(), USER, chat_id),
        (TENANT, USER, other_chat),
    ):
        assert await turns.owned_turn_status(database, tenant_id, user_id, wanted, request_id) is None
    finished = await turns.cas_finish(
        database,
        turn_id,
        state="failed",
        error_code="provider_error",
        error_detail="boom",
        provider_response_id=None,
        now=NOW,
    )
    assert finished
    # A soft-deleted turn is still answered; a deleted chat is not.
    await database.execute(chat_turns.update().where(chat_turns.c.id == turn_id).values(deleted_at=NOW))
    status = await turns.owned_turn_status(database, TENANT, USER, chat_id, request_id)
    assert status is not None and (status.state, status.error_code) == ("failed", "provider_error")
    await database.execute(chats.update().where(chats.c.id == chat_id).values(deleted_at=NOW))
    assert await turns.owned_turn_status(database, TENANT, USER, chat_id, request_id) is None


PREFLIGHT = turns.Preflight(
    reserve_tokens=900,
    max_output_tokens_applied=512,
    reserved_credits_micro=4_500,
    policy_version_applied=3,
    effective_model="gpt-4o",
    minimal_generation_floor_applied=64,
    quota_decision="allow",
    downgrade_from=None,
    downgrade_reason=None,
    provider_name="openai",
)


async def _send_rows(
    db: databases.Database, chat_id: uuid.UUID, request_id: uuid.UUID, *, together: bool
) -> tuple[uuid.UUID, uuid.UUID]:
    message_id, turn_id = uuid.uuid4(), uuid.uuid4()
    common = {"tenant_id": TENANT, "chat_id": chat_id, "request_id": request_id, "now": NOW}
    if together:
        await turns.insert_user_message_and_turn(
            db,
            message_id=message_id,
            turn_id=turn_id,
            requester_user_id=USER,
            content="héllo",
            token_estimate=2,
            web_search_enabled=True,
            preflight=PREFLIGHT,
            **common,
        )
    else:
        await turns.insert_user_message(
            db, message_id=message_id, content="héllo", token_estimate=2, **common
        )
        await turns.insert_turn(
            db,
            turn_id=turn_id,
            requester_user_id=USER,
            web_search_enabled=True,
            preflight=PREFLIGHT,
            **common,
        )
    return message_id, turn_id


async def test_message_and_turn_in_one_statement_equal_two(database: databases.Database) -> None:
    # On PostgreSQL the send's inserts are one statement (a data-modifying CTE); the rows must be the ones
    # the two plain inserts write, and a conflict on either index must still be a TurnConflict.
    rows = []
    for together in (False, True):
        chat_id = await _chat(database)
        message_id, turn_id = await _send_rows(database, chat_id, uuid.uuid4(), together=together)
        message_row = await database.fetch_one(sa.select(messages).where(messages.c.id == message_id))
        turn_row = await database.fetch_one(sa.select(chat_turns).where(chat_turns.c.id == turn_id))
        assert message_row is not None and turn_row is not None
        message, turn = dict(message_row._mapping), dict(turn_row._mapping)
        for row in (message, turn):
            for key in ("id", "chat_id", "request_id"):
                row.pop(key)
        rows.append((message, turn))
    assert rows[0] == rows[1]
    message, turn = rows[1]
    assert (message["role"], message["content"], message["token_estimate"]) == ("user", "héllo", 2)
    assert (turn["state"], turn["reserved_credits_micro"], turn["web_search_enabled"]) == (
        "running",
        4_500,
        True,
    )

    chat_id = await _chat(database)
    request_id = uuid.uuid4()
    await _send_rows(database, chat_id, request_id, together=True)
    before = await database.fetch_val(sa.select(sa.func.count()).select_from(messages))
    with pytest.raises(turns.TurnConflict):  # a second running turn in the chat
        async with database.transaction():
            await _send_rows(database, chat_id, uuid.uuid4(), together=True)
    with pytest.raises(turns.TurnConflict):  # the request's live message exists
        async with database.transaction():
            await _send_rows(database, chat_id, request_id, together=True)
    assert await database.fetch_val(sa.select(sa.func.count()).select_from(messages)) == before


async def test_concurrent_cas_has_one_winner(database: databases.Database) -> None:
    chat_id = await _chat(database)
    turn_id = await _turn(database, chat_id)

    async def finish(state: turns.TurnState) -> bool:
        async with database.transaction():
            return await turns.cas_finish(
                database,
                turn_id,
                state=state,
                error_code=None,
                error_detail=None,
                provider_response_id=None,
                now=NOW,
            )

    results = await asyncio.gather(*(finish(s) for s in ("completed", "failed", "cancelled") * 3))
    assert sum(results) == 1


async def test_orphan_cas_rechecks_staleness(database: databases.Database) -> None:
    chat_id = await _chat(database)
    turn_id = await _turn(database, chat_id)
    stale_before = NOW - dt.timedelta(seconds=1)
    assert await turns.find_stale_running(database, stale_before=stale_before) == []
    assert not await turns.cas_orphan(database, turn_id, stale_before=stale_before, now=NOW)
    later = NOW + dt.timedelta(seconds=10)
    assert [t.id for t in await turns.find_stale_running(database, stale_before=later)] == [turn_id]
    await turns.touch_progress(database, turn_id, later + dt.timedelta(seconds=1))
    assert not await turns.cas_orphan(database, turn_id, stale_before=later, now=later)
    assert await turns.cas_orphan(database, turn_id, stale_before=later + dt.timedelta(seconds=5), now=later)
