"""Structs that cross the plugin boundary (original-outbox-and-plugins.md §3).

Plugins receive and return these; they are msgspec structs so the outbox can store them as JSON and
decode them back without loss. Optional fields default to None and are omitted when encoded.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class _S(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=False):
    pass


# --- plugin metadata ------------------------------------------------------------------------------
class Capability(_S):
    """One capability a plugin offers: which `vendor` it answers for and its `priority` (lowest wins)."""

    capability: Literal["model_policy", "audit", "storage"]
    vendor: str
    priority: int = 100


class PluginSettings(_S):
    """Returned by `minichat_plugin_settings`: the plugin's config section name and its msgspec struct."""

    section: str
    struct: Any  # a msgspec.Struct subclass (type), validated against `plugins.settings.<section>`


# --- model policy ---------------------------------------------------------------------------------
class KillSwitches(_S):
    disable_premium_tier: bool = False
    force_standard_tier: bool = False
    disable_web_search: bool = False
    disable_file_search: bool = False
    disable_images: bool = False
    disable_code_interpreter: bool = False


class EstimationBudgets(_S):
    bytes_per_token_conservative: int = 4
    fixed_overhead_tokens: int = 100
    safety_margin_pct: int = 10
    image_token_budget: int = 1000
    tool_surcharge_tokens: int = 500
    web_search_surcharge_tokens: int = 500
    code_interpreter_surcharge_tokens: int = 1000
    minimal_generation_floor: int = 50


class ApiParams(_S):
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: list[str] | None = None
    reasoning_effort: str | None = None
    extra_body: dict[str, Any] | None = None


class ToolSupport(_S):
    web_search: bool = False
    file_search: bool = True
    image_generation: bool = False
    code_interpreter: bool = False
    mcp: bool = False


class GeneralConfig(_S):
    max_file_size_mb: int = 25
    api_params: ApiParams = msgspec.field(default_factory=ApiParams)
    tool_support: ToolSupport = msgspec.field(default_factory=ToolSupport)


class ModelPreference(_S):
    is_default: bool = False
    sort_order: int = 0


class ModelCatalogEntry(_S):
    id: str
    provider_model_id: str
    display_name: str
    provider_id: str = "local"
    description: str | None = None
    provider_display_name: str | None = None
    icon: str | None = None
    tier: Literal["standard", "premium"] = "standard"
    enabled: bool = True
    multimodal_capabilities: list[str] = msgspec.field(default_factory=list)
    context_window: int = 128000
    max_output_tokens: int = 4096
    max_input_tokens: int = 120000
    input_tokens_credit_multiplier_micro: int = 1_000_000
    output_tokens_credit_multiplier_micro: int = 1_000_000
    multiplier_display: str = "1x"
    estimation_budgets: EstimationBudgets = msgspec.field(default_factory=EstimationBudgets)
    max_num_results: int = 5
    web_search_context_size: Literal["low", "medium", "high"] = "low"
    max_tool_calls: int = 2
    general_config: GeneralConfig = msgspec.field(default_factory=GeneralConfig)
    preference: ModelPreference | None = None
    system_prompt: str = ""
    thread_summary_prompt: str = ""


class PolicySnapshot(_S):
    user_id: str
    policy_version: int
    model_catalog: list[ModelCatalogEntry]
    kill_switches: KillSwitches = msgspec.field(default_factory=KillSwitches)


class TierLimits(_S):
    limit_daily_credits_micro: int
    limit_monthly_credits_micro: int


class UserLimits(_S):
    user_id: str
    policy_version: int
    standard: TierLimits
    premium: TierLimits


# --- events delivered through the outbox ---------------------------------------------------------
class Usage(_S):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_write_input_tokens: int = 0
    reasoning_tokens: int = 0


class UsageEvent(_S):
    tenant_id: str
    chat_id: str
    request_id: str
    effective_model: str
    selected_model: str
    terminal_state: str
    billing_outcome: str
    actual_credits_micro: int
    settlement_method: str
    policy_version_applied: int
    timestamp: str
    requester_type: Literal["user", "system"] = "user"
    user_id: str | None = None
    turn_id: str | None = None
    usage: Usage | None = None
    web_search_calls: int = 0
    code_interpreter_calls: int = 0
    dedupe_key: str | None = None
    system_task_type: str | None = None


class AuditUsage(_S):
    input_tokens: int = 0
    output_tokens: int = 0
    model: str | None = None
    cache_read_input_tokens: int | None = None
    cache_write_input_tokens: int | None = None
    reasoning_tokens: int | None = None


class LatencyMs(_S):
    ttft_ms: int | None = None
    total_ms: int | None = None


class QuotaPolicyDecision(_S):
    decision: str
    quota_scope: str | None = None
    downgrade_from: str | None = None
    downgrade_reason: str | None = None


class PolicyDecisions(_S):
    quota: QuotaPolicyDecision
    license: dict[str, str] | None = None


class AuditAttachment(_S):
    attachment_id: str
    attachment_kind: str
    filename: str | None = None
    content_type: str | None = None
    size_bytes: int | None = None
    image_used_in_turn: bool | None = None
    doc_summary: str | None = None


class ToolCalls(_S):
    file_search_calls: int | None = None
    web_search_calls: int | None = None
    code_interpreter_calls: int | None = None


class TurnAuditEvent(_S):
    event_type: Literal["turn_completed", "turn_failed"]
    timestamp: str
    tenant_id: str
    user_id: str
    chat_id: str
    turn_id: str
    request_id: str
    selected_model: str
    effective_model: str
    usage: AuditUsage
    latency_ms: LatencyMs
    policy_decisions: PolicyDecisions
    requester_type: Literal["user", "system"] = "user"
    trace_id: str | None = None
    policy_version_applied: int | None = None
    error_code: str | None = None
    prompt: str | None = None
    response: str | None = None
    attachments: list[AuditAttachment] = msgspec.field(default_factory=list)
    tool_calls: ToolCalls | None = None


class TurnMutationAuditEvent(_S):
    event_type: Literal["turn_retry", "turn_edit"]
    timestamp: str
    tenant_id: str
    actor_user_id: str
    chat_id: str
    turn_id: str
    original_request_id: str
    new_request_id: str
    requester_type: Literal["user", "system"] = "user"
    trace_id: str | None = None


class TurnDeleteAuditEvent(_S):
    event_type: Literal["turn_delete"]
    timestamp: str
    tenant_id: str
    actor_user_id: str
    chat_id: str
    turn_id: str
    request_id: str
    requester_type: Literal["user", "system"] = "user"
    trace_id: str | None = None


AuditEvent = TurnAuditEvent | TurnMutationAuditEvent | TurnDeleteAuditEvent


class AuditEnvelope(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the audit queue carries: `type` says which struct `event` is and which hook receives it."""

    type: Literal["turn", "mutation", "delete"]
    event: dict[str, Any]

    @classmethod
    def wrap(cls, event: AuditEvent) -> AuditEnvelope:
        kind: Literal["turn", "mutation", "delete"] = (
            "turn"
            if isinstance(event, TurnAuditEvent)
            else "mutation"
            if isinstance(event, TurnMutationAuditEvent)
            else "delete"
        )
        return cls(type=kind, event=msgspec.to_builtins(event))

    def unwrap(self) -> AuditEvent:
        """Decode `event` into its struct; raises msgspec.ValidationError when it does not fit."""
        target: type[AuditEvent] = {
            "turn": TurnAuditEvent,
            "mutation": TurnMutationAuditEvent,
            "delete": TurnDeleteAuditEvent,
        }[self.type]  # type: ignore[assignment]
        return msgspec.convert(self.event, target)


# --- storage --------------------------------------------------------------------------------------
class StoredFile(_S):
    file_id: str
    size_bytes: int


class SearchHit(_S):
    attachment_id: str
    filename: str
    snippet: str
    score: float | None = None
