"""The `plugins.settings.storage_azure` section (endpoints, keys and api_version come from each provider)."""

from __future__ import annotations

from typing import Annotated

import msgspec

SECTION = "storage_azure"
VENDOR = "azure"


class StorageAzureSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    vendor: str = VENDOR
    priority: int = 100
    purpose: str = "assistants"  # the Files API `purpose` for documents and images alike
    request_timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 60.0

    def __post_init__(self) -> None:
        if not self.vendor:
            raise ValueError("vendor must not be empty")
