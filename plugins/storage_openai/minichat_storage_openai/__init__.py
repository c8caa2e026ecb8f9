"""minichat storage on OpenAI Files + Vector Stores (vendor `openai`)."""

from __future__ import annotations

from minichat_storage_openai.plugin import StorageOpenAIPlugin
from minichat_storage_openai.settings import SECTION, VENDOR, StorageOpenAISettings

__all__ = ["SECTION", "VENDOR", "StorageOpenAIPlugin", "StorageOpenAISettings"]
