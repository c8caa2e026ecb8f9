"""The `storage_openai` plugin: storage for vendor `openai` on the OpenAI Files and Vector Stores APIs.

Each provider whose `storage` names this plugin's vendor supplies the base URL and API key
(`Authorization: Bearer`); `tenant_overrides` may replace them per tenant. The HTTP work and the status
mapping (5xx / 408 / 429 / timeouts -> TransientError, other 4xx -> PermanentError `<op>_failed`, deletes
treat 404 as done) live in `minichat_host.providers.files_api`, shared with the Azure plugin.
"""

from __future__ import annotations

from minichat_host import hookimpl
from minichat_host.config import Config
from minichat_host.plugins.types import Capability, PluginSettings, StoredFile
from minichat_host.providers.files_api import FilesApiClient, StorageConfigError
from minichat_storage_openai.settings import SECTION, StorageOpenAISettings


class StorageOpenAIPlugin:
    """Storage for providers whose `storage` is `openai` (configurable with the `vendor` setting)."""

    def __init__(self) -> None:
        self.settings = StorageOpenAISettings()
        self.config: Config | None = None
        self._client: FilesApiClient | None = None

    @hookimpl
    def minichat_plugin_settings(self) -> PluginSettings:
        return PluginSettings(section=SECTION, struct=StorageOpenAISettings)

    @hookimpl
    def minichat_configure(self, settings: StorageOpenAISettings, config: Config) -> None:
        # Validates the providers that store files here (base_url required) before anything is stored.
        self._client = FilesApiClient(
            "openai",
            settings.vendor,
            config.providers,
            request_timeout_seconds=settings.request_timeout_seconds,
        )
        self.settings = settings
        self.config = config

    @hookimpl
    def minichat_capabilities(self) -> list[Capability]:
        return [
            Capability(capability="storage", vendor=self.settings.vendor, priority=self.settings.priority)
        ]

    @hookimpl
    async def minichat_shutdown(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    @property
    def client(self) -> FilesApiClient:
        if self._client is None:
            raise StorageConfigError("configuration_error: storage_openai is not configured")
        return self._client

    # --- storage hooks ----------------------------------------------------------------------------
    @hookimpl
    async def minichat_storage_upload_file(
        self,
        provider_id: str,
        tenant_id: str,
        chat_id: str,
        attachment_id: str,
        filename: str,
        content_type: str,
        path: str,
        purpose: str,
    ) -> StoredFile:
        return await self.client.upload_file(
            provider_id=provider_id,
            tenant_id=tenant_id,
            chat_id=chat_id,
            attachment_id=attachment_id,
            filename=filename,
            content_type=content_type,
            path=path,
            purpose=purpose or self.settings.purpose,
        )

    @hookimpl
    async def minichat_storage_delete_file(self, provider_id: str, tenant_id: str, file_id: str) -> None:
        await self.client.delete_file(provider_id=provider_id, tenant_id=tenant_id, file_id=file_id)

    @hookimpl
    async def minichat_storage_create_vector_store(
        self, provider_id: str, tenant_id: str, chat_id: str
    ) -> str:
        return await self.client.create_vector_store(
            provider_id=provider_id, tenant_id=tenant_id, chat_id=chat_id
        )

    @hookimpl
    async def minichat_storage_add_file_to_vector_store(
        self, provider_id: str, tenant_id: str, vector_store_id: str, file_id: str, attributes: dict[str, str]
    ) -> None:
        await self.client.add_file_to_vector_store(
            provider_id=provider_id,
            tenant_id=tenant_id,
            vector_store_id=vector_store_id,
            file_id=file_id,
            attributes=attributes,
        )

    @hookimpl
    async def minichat_storage_delete_vector_store(
        self, provider_id: str, tenant_id: str, vector_store_id: str
    ) -> None:
        await self.client.delete_vector_store(
            provider_id=provider_id, tenant_id=tenant_id, vector_store_id=vector_store_id
        )
