"""The hooks a minichat plugin may implement.

Every hook name starts with `minichat_` and takes keyword arguments, so an implementation may accept a
subset. Implementations may be `async def`; the host awaits the result under a timeout. Capability hooks
(model policy, audit, storage) are not broadcast: the host calls only the plugin that the capability
resolved to for the configured vendor (see `minichat_capabilities`). Each hook has a section in
docs/plugins.md (a test enforces it).
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("minichat")
hookimpl = pluggy.HookimplMarker("minichat")


# --- plugin metadata and lifecycle ----------------------------------------------------------------
@hookspec
def minichat_capabilities() -> Any:
    """Return a list of `Capability(capability, vendor, priority)` this plugin offers."""


@hookspec
def minichat_plugin_settings() -> Any:
    """Return `PluginSettings(section, struct)`: the struct validating `plugins.settings.<section>`."""


@hookspec
def minichat_configure(settings: Any, config: Any, data_dir: Any) -> Any:
    """Receive the validated settings struct (or None), the host Config and the data directory at start-up."""


@hookspec
def minichat_shutdown() -> Any:
    """Release resources (files, HTTP sessions) when the host stops. May be async."""


# --- capability: model_policy ---------------------------------------------------------------------
@hookspec
def minichat_get_current_policy_version(tenant_id: str, user_id: str) -> Any:
    """Return the current policy version (int) for this user."""


@hookspec
def minichat_get_policy_snapshot(tenant_id: str, user_id: str, policy_version: int) -> Any:
    """Return the `PolicySnapshot` (model catalog + kill switches) of `policy_version`."""


@hookspec
def minichat_get_user_limits(tenant_id: str, user_id: str, policy_version: int) -> Any:
    """Return the user's `UserLimits` (standard and premium tier credit limits) under `policy_version`."""


@hookspec
def minichat_check_user_license(tenant_id: str, user_id: str) -> Any:
    """Return True when the user holds an active license."""


@hookspec
def minichat_publish_usage(event: Any) -> Any:
    """Receive a `UsageEvent` from the usage queue. Raise TransientError to retry, PermanentError to reject.

    Delivery is at-least-once: drop redeliveries by `event.dedupe_key`.
    """


# --- capability: audit ----------------------------------------------------------------------------
@hookspec
def minichat_emit_turn_audit(event: Any) -> Any:
    """Receive a `TurnAuditEvent` (turn_completed / turn_failed)."""


@hookspec
def minichat_emit_turn_retry_audit(event: Any) -> Any:
    """Receive a `TurnMutationAuditEvent` with event_type turn_retry."""


@hookspec
def minichat_emit_turn_edit_audit(event: Any) -> Any:
    """Receive a `TurnMutationAuditEvent` with event_type turn_edit."""


@hookspec
def minichat_emit_turn_delete_audit(event: Any) -> Any:
    """Receive a `TurnDeleteAuditEvent`."""


# --- capability: storage --------------------------------------------------------------------------
@hookspec
def minichat_storage_upload_file(
    provider_id: str,
    tenant_id: str,
    chat_id: str,
    attachment_id: str,
    filename: str,
    content_type: str,
    path: str,
    purpose: str,
) -> Any:
    """Upload the file at `path`; return `StoredFile(file_id, size_bytes)`."""


@hookspec
def minichat_storage_delete_file(provider_id: str, tenant_id: str, file_id: str) -> Any:
    """Delete a stored file. A file that is already gone counts as deleted."""


@hookspec
def minichat_storage_create_vector_store(provider_id: str, tenant_id: str, chat_id: str) -> Any:
    """Create a vector store for a chat; return its id (str)."""


@hookspec
def minichat_storage_add_file_to_vector_store(
    provider_id: str, tenant_id: str, vector_store_id: str, file_id: str, attributes: dict[str, str]
) -> Any:
    """Index a stored file into the vector store, tagged with `attributes` (e.g. attachment_id)."""


@hookspec
def minichat_storage_delete_vector_store(provider_id: str, tenant_id: str, vector_store_id: str) -> Any:
    """Delete a vector store. A store that is already gone counts as deleted."""


@hookspec
def minichat_storage_search(
    provider_id: str, tenant_id: str, vector_store_id: str, query: str, max_results: int
) -> Any:
    """Search a vector store; return a list of `SearchHit`. Used by providers without hosted file search."""
