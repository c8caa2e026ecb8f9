"""Every name that crosses a process or storage boundary, in one place (queues, ids, env vars)."""

from __future__ import annotations

from typing import Final

# Identity used by the `dev` auth mode (the original's dev ids).
DEV_TENANT_ID: Final = "00000000-df51-5b42-9538-d2b56b7ee953"
DEV_USER_ID: Final = "11111111-6a88-4768-9dfc-6bcd5187d9ed"

# Outbox queues (names as in the original).
QUEUE_USAGE: Final = "mini-chat.usage_snapshot"
QUEUE_AUDIT: Final = "mini-chat.audit"
QUEUE_ATTACHMENT_CLEANUP: Final = "mini-chat.attachment_cleanup"
QUEUE_CHAT_CLEANUP: Final = "mini-chat.chat_cleanup"
QUEUE_THREAD_SUMMARY: Final = "mini-chat.thread_summary"
ALL_QUEUES: Final = (
    QUEUE_USAGE,
    QUEUE_AUDIT,
    QUEUE_ATTACHMENT_CLEANUP,
    QUEUE_CHAT_CLEANUP,
    QUEUE_THREAD_SUMMARY,
)
PAYLOAD_TYPE_JSON: Final = "application/json"

# Plugin capabilities.
CAP_MODEL_POLICY: Final = "model_policy"
CAP_AUDIT: Final = "audit"
CAP_STORAGE: Final = "storage"
CAPABILITIES: Final = (CAP_MODEL_POLICY, CAP_AUDIT, CAP_STORAGE)

# Entry-point group and environment variables.
ENTRY_POINT_GROUP: Final = "minichat"
ENV_CONFIG: Final = "MINICHAT_CONFIG"
ENV_HOME: Final = "MINICHAT_HOME"
ENV_LOAD_PLUGINS: Final = "MINICHAT_LOAD_PLUGINS"
ENV_TRACE_PLUGINS: Final = "MINICHAT_TRACE_PLUGINS"

# PostgreSQL advisory lock keys (pg_try_advisory_lock).
ADVISORY_LOCK_ORPHAN_WATCHDOG: Final = 0x6D63_0001
