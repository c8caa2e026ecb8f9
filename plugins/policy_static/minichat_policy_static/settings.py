"""The `plugins.settings.policy_static` section."""

from __future__ import annotations

import msgspec

from minichat_host.plugins.types import (
    GeneralConfig,
    KillSwitches,
    ModelCatalogEntry,
    ModelPreference,
    TierLimits,
    ToolSupport,
)

SECTION = "policy_static"
LOCAL_MODEL_DESCRIPTION = "Offline local model (no network) for development and tests"


def demo_catalog() -> list[ModelCatalogEntry]:
    """Two models served by the built-in offline `local` provider, so a fresh install can chat."""
    tools = ToolSupport(file_search=True, code_interpreter=True)
    return [
        ModelCatalogEntry(
            id="local-premium",
            provider_model_id="minichat-local",
            display_name="Local Premium",
            provider_id="local",
            provider_display_name="minichat local",
            description=LOCAL_MODEL_DESCRIPTION,
            tier="premium",
            enabled=True,
            multimodal_capabilities=["VISION_INPUT"],
            context_window=128000,
            max_output_tokens=4096,
            max_input_tokens=120000,
            input_tokens_credit_multiplier_micro=3_000_000,
            output_tokens_credit_multiplier_micro=15_000_000,
            multiplier_display="3x",
            general_config=GeneralConfig(tool_support=tools),
            preference=ModelPreference(is_default=True, sort_order=0),
        ),
        ModelCatalogEntry(
            id="local-standard",
            provider_model_id="minichat-local",
            display_name="Local Standard",
            provider_id="local",
            provider_display_name="minichat local",
            description=LOCAL_MODEL_DESCRIPTION,
            tier="standard",
            enabled=True,
            multimodal_capabilities=["VISION_INPUT"],
            context_window=128000,
            max_output_tokens=4096,
            max_input_tokens=120000,
            input_tokens_credit_multiplier_micro=1_000_000,
            output_tokens_credit_multiplier_micro=3_000_000,
            multiplier_display="1x",
            general_config=GeneralConfig(tool_support=tools),
            preference=ModelPreference(is_default=False, sort_order=1),
        ),
    ]


def _standard_limits() -> TierLimits:
    return TierLimits(limit_daily_credits_micro=100_000_000, limit_monthly_credits_micro=1_000_000_000)


def _premium_limits() -> TierLimits:
    return TierLimits(limit_daily_credits_micro=50_000_000, limit_monthly_credits_micro=500_000_000)


class PolicyStaticSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything the static policy serves; limits are micro-credits and the same for every user."""

    vendor: str = "minichat"
    priority: int = 100
    model_catalog: list[ModelCatalogEntry] = msgspec.field(default_factory=demo_catalog)
    kill_switches: KillSwitches = msgspec.field(default_factory=KillSwitches)
    default_standard_limits: TierLimits = msgspec.field(default_factory=_standard_limits)
    default_premium_limits: TierLimits = msgspec.field(default_factory=_premium_limits)
    ledger_path: str = ""  # "" = <data_dir>/usage-ledger.jsonl

    def __post_init__(self) -> None:
        if not self.vendor:
            raise ValueError("vendor must not be empty")
        ids = [entry.id for entry in self.model_catalog]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"model_catalog has duplicate ids: {', '.join(duplicates)}")
        for name in ("default_standard_limits", "default_premium_limits"):
            limits: TierLimits = getattr(self, name)
            if limits.limit_daily_credits_micro < 0 or limits.limit_monthly_credits_micro < 0:
                raise ValueError(f"{name} must not be negative")
