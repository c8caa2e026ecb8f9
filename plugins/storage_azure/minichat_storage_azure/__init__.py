"""minichat storage on Azure OpenAI Files + Vector Stores (vendor `azure`)."""

from __future__ import annotations

from minichat_storage_azure.plugin import StorageAzurePlugin
from minichat_storage_azure.settings import SECTION, VENDOR, StorageAzureSettings

__all__ = ["SECTION", "VENDOR", "StorageAzurePlugin", "StorageAzureSettings"]
