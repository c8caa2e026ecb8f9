"""minichat model policy from config: a static model catalog, kill switches and per-tier limits.

`publish_usage` appends every usage event once (by dedupe key) to a JSON-lines ledger that
`ledger_report()` / the `minichat-usage-ledger` command summarize.
"""

from __future__ import annotations

from minichat_policy_static.ledger import UsageLedger, ledger_report
from minichat_policy_static.plugin import POLICY_VERSION, PolicyStaticPlugin, PolicyVersionNotFound
from minichat_policy_static.settings import SECTION, PolicyStaticSettings, demo_catalog

__all__ = [
    "POLICY_VERSION",
    "SECTION",
    "PolicyStaticPlugin",
    "PolicyStaticSettings",
    "PolicyVersionNotFound",
    "UsageLedger",
    "demo_catalog",
    "ledger_report",
]
