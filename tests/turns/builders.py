"""Build a running turn straight through the repositories (as the send path leaves it), for tests that
drive the finalizer and the watchdog directly."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from minichat_host.db.repos import quota_ledger, turns
from minichat_host.domain import events
from minichat_host.domain.finalize import TurnContext
from minichat_host.domain.quota import (
    Allow,
    TurnReserve,
    estimate_reserve,
    find_model,
    periods_for,
    reserve_writes,
)
from turns.conftest import TENANT, USER, Harness, utc_now


@dataclass
class RunningTurn:
    chat_id: str
    request_id: uuid.UUID
    turn_id: uuid.UUID
    ctx: TurnContext


async def running_turn(
    harness: Harness,
    model_id: str = "local-standard",
    *,
    started_at: dt.datetime | None = None,
    content: str = "hello world",
    preflight: bool = True,
) -> RunningTurn:
    chat_id = await harness.create_chat(model_id)
    now = started_at or utc_now()
    recorder = harness.recorder
    version = recorder.current
    snapshot = await recorder.minichat_get_policy_snapshot(str(USER), version)
    limits = await recorder.minichat_get_user_limits(str(USER), version)
    model = find_model(snapshot, model_id)
    assert model is not None
    config = harness.service._config
    estimate = estimate_reserve(
        message_bytes=len(content.encode()),
        image_count=0,
        has_ready_documents=False,
        web_search=False,
        code_interpreter=False,
        prior_context_tokens=0,
        budgets=config.estimation_budgets,
        model=model,
        streaming_max_output_tokens=config.streaming.max_output_tokens,
    )
    periods = tuple(periods_for(now))
    granted = Allow(effective=model, tier=model.tier, reserve=estimate)
    request_id, turn_id = uuid.uuid4(), uuid.uuid4()
    db = harness.db
    async with db.transaction():
        if preflight:
            await quota_ledger.apply_deltas(db, TENANT, USER, reserve_writes(granted, periods), now=now)
        await turns.insert_user_message(
            db,
            message_id=uuid.uuid4(),
            tenant_id=TENANT,
            chat_id=uuid.UUID(chat_id),
            request_id=request_id,
            content=content,
            token_estimate=1,
            now=now,
        )
        await turns.insert_turn(
            db,
            turn_id=turn_id,
            tenant_id=TENANT,
            chat_id=uuid.UUID(chat_id),
            request_id=request_id,
            requester_user_id=USER,
            web_search_enabled=False,
            now=now,
            preflight=turns.Preflight(
                reserve_tokens=estimate.reserve_tokens,
                max_output_tokens_applied=estimate.max_output_tokens_applied,
                reserved_credits_micro=estimate.reserved_credits_micro,
                policy_version_applied=version,
                effective_model=model.id,
                minimal_generation_floor_applied=estimate.minimal_generation_floor_applied,
                quota_decision="allow",
                downgrade_from=None,
                downgrade_reason=None,
                provider_name=model.provider_id,
            )
            if preflight
            else None,
        )
    ctx = TurnContext(
        facts=events.TurnFacts(
            tenant_id=TENANT,
            user_id=USER,
            chat_id=uuid.UUID(chat_id),
            turn_id=turn_id,
            request_id=request_id,
            selected_model=model_id,
            effective_model=model.id,
            policy_version_applied=version,
        ),
        assistant_message_id=uuid.uuid4(),
        model=model,
        reserve=TurnReserve.of(estimate) if preflight else None,
        periods=periods,
        limits=limits,
        quota_decision="allow",
        downgrade_from=None,
        downgrade_reason=None,
    )
    return RunningTurn(chat_id, request_id, turn_id, ctx)
