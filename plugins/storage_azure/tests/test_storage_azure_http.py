"""storage_azure against the fake Azure OpenAI server: `api-key`, `api-version`, `/openai/...` paths,
status mapping, retries and timeouts."""

from __future__ import annotations

import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from minichat_storage_azure.plugin import StorageAzurePlugin
from minichat_storage_azure.settings import StorageAzureSettings

from minichat_host.config import Config, ProviderConfig
from minichat_host.plugins.errors import PermanentError, TransientError
from minichat_host.plugins.manager import PluginHost
from minichat_host.providers.files_api import StorageRejectedError
from minichat_host.testing import make_config

# The protocol-faithful fake lives with the host's tests (tests/fakes).
_HOST_TESTS = Path(__file__).resolve().parents[3] / "tests"
if str(_HOST_TESTS) not in sys.path:
    sys.path.insert(0, str(_HOST_TESTS))
from fakes.openai_server import DEFAULT_API_KEY, FakeOpenAI  # noqa: E402

TENANT = "tenant-1"
CHAT_ID = "0b6f4b1e-3f0c-4d7c-9d55-1f2a3b4c5d6e"
ATTACHMENT_ID = "6f1c2d3e-4b5a-4c6d-8e7f-90a1b2c3d4e5"
API_VERSION = "2025-03-01-preview"
DOCUMENT_BYTES = b"Azure hosted document " * 500
OPS = {
    "files.create": "upload_file",
    "files.delete": "delete_file",
    "vector_stores.create": "create_vector_store",
    "vector_stores.files.create": "add_file_to_vector_store",
    "vector_stores.delete": "delete_vector_store",
}


def config_for(base_url: str, **provider: object) -> Config:
    fields: dict[str, object] = {
        "kind": "openai_responses",
        "base_url": base_url,
        "api_path": "/openai/deployments/{model}/responses",
        "auth": "api-key",
        "api_key": DEFAULT_API_KEY,
        "api_version": API_VERSION,
        "storage": "azure",
    }
    fields.update(provider)
    return Config(providers={"azure": ProviderConfig(**fields)})  # type: ignore[arg-type]


def configured(config: Config, **settings: object) -> StorageAzurePlugin:
    plugin = StorageAzurePlugin()
    plugin.minichat_configure(settings=StorageAzureSettings(**settings), config=config)  # type: ignore[arg-type]
    return plugin


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def plugin(fake: FakeOpenAI) -> AsyncIterator[StorageAzurePlugin]:
    instance = configured(config_for(fake.base_url), request_timeout_seconds=5.0)
    try:
        yield instance
    finally:
        await instance.minichat_shutdown()


@pytest.fixture
def document(tmp_path: Path) -> Path:
    path = tmp_path / "upload.bin"
    path.write_bytes(DOCUMENT_BYTES)
    return path


async def upload(plugin: StorageAzurePlugin, path: Path) -> object:
    return await plugin.minichat_storage_upload_file(
        provider_id="azure",
        tenant_id=TENANT,
        chat_id=CHAT_ID,
        attachment_id=ATTACHMENT_ID,
        filename="notes.md",
        content_type="text/markdown",
        path=str(path),
        purpose="assistants",
    )


async def call(fake: FakeOpenAI, plugin: StorageAzurePlugin, op: str, document: Path) -> object:
    if op == "files.create":
        return await upload(plugin, document)
    if op == "files.delete":
        file_id = fake.seed_file("x.txt", b"x")
        return await plugin.minichat_storage_delete_file(
            provider_id="azure", tenant_id=TENANT, file_id=file_id
        )
    if op == "vector_stores.create":
        return await plugin.minichat_storage_create_vector_store(
            provider_id="azure", tenant_id=TENANT, chat_id=CHAT_ID
        )
    if op == "vector_stores.files.create":
        return await plugin.minichat_storage_add_file_to_vector_store(
            provider_id="azure",
            tenant_id=TENANT,
            vector_store_id=fake.seed_vector_store({}),
            file_id=fake.seed_file("x.txt", b"x"),
            attributes={"attachment_id": ATTACHMENT_ID},
        )
    return await plugin.minichat_storage_delete_vector_store(
        provider_id="azure", tenant_id=TENANT, vector_store_id=fake.seed_vector_store({})
    )


def test_configure_requires_api_version() -> None:
    with pytest.raises(ValueError, match="api_version"):
        configured(config_for("http://127.0.0.1:1", api_version=""))


def test_configure_requires_a_base_url() -> None:
    with pytest.raises(ValueError, match=r"providers\.azure\.base_url"):
        configured(config_for(""))


async def test_upload_uses_azure_paths_and_headers(
    fake: FakeOpenAI, plugin: StorageAzurePlugin, document: Path
) -> None:
    stored = await upload(plugin, document)
    record = fake.last("files.create")
    assert (record.path, record.query, record.family) == (
        "/openai/files",
        {"api-version": API_VERSION},
        "azure",
    )
    assert record.headers["api-key"] == DEFAULT_API_KEY
    assert "authorization" not in record.headers
    assert record.form["purpose"] == "assistants"
    assert record.form["file"] == {
        "filename": f"{CHAT_ID}_{ATTACHMENT_ID}.md",
        "content_type": "text/markdown",
        "size": len(DOCUMENT_BYTES),
    }
    assert fake.files[stored.file_id].content == DOCUMENT_BYTES  # type: ignore[attr-defined]


async def test_vector_store_lifecycle(fake: FakeOpenAI, plugin: StorageAzurePlugin, document: Path) -> None:
    file_id = (await upload(plugin, document)).file_id  # type: ignore[attr-defined]
    vs_id = await plugin.minichat_storage_create_vector_store(
        provider_id="azure", tenant_id=TENANT, chat_id=CHAT_ID
    )
    await plugin.minichat_storage_add_file_to_vector_store(
        provider_id="azure",
        tenant_id=TENANT,
        vector_store_id=vs_id,
        file_id=file_id,
        attributes={"attachment_id": ATTACHMENT_ID},
    )
    assert fake.vector_stores[vs_id].files == {file_id: {"attachment_id": ATTACHMENT_ID}}
    added = fake.last("vector_stores.files.create")
    assert (added.path, added.query) == (f"/openai/vector_stores/{vs_id}/files", {"api-version": API_VERSION})
    for _ in range(2):  # the second time both are gone already (404 = deleted)
        await plugin.minichat_storage_delete_vector_store(
            provider_id="azure", tenant_id=TENANT, vector_store_id=vs_id
        )
        await plugin.minichat_storage_delete_file(provider_id="azure", tenant_id=TENANT, file_id=file_id)
    assert [r.status for r in fake.by_op("vector_stores.delete")] == [200, 404]
    assert all(r.query == {"api-version": API_VERSION} for r in fake.requests)


@pytest.mark.parametrize("op", list(OPS))
async def test_5xx_is_transient_and_4xx_permanent(
    fake: FakeOpenAI, plugin: StorageAzurePlugin, document: Path, op: str
) -> None:
    fake.fail_next(op, status=500)
    with pytest.raises(TransientError):
        await call(fake, plugin, op, document)
    fake.fail_next(op, status=400)
    with pytest.raises(StorageRejectedError) as caught:
        await call(fake, plugin, op, document)
    assert caught.value.code == f"{OPS[op]}_failed"


@pytest.mark.parametrize("op", list(OPS))
async def test_fail_twice_then_succeed(
    fake: FakeOpenAI, plugin: StorageAzurePlugin, document: Path, op: str
) -> None:
    fake.fail_next(op, times=2, status=503)
    for _ in range(2):
        with pytest.raises(TransientError):
            await call(fake, plugin, op, document)
    await call(fake, plugin, op, document)
    assert [r.status for r in fake.by_op(op)][-3:] == [503, 503, 200]


async def test_a_response_that_is_not_json_is_permanent(fake: FakeOpenAI, plugin: StorageAzurePlugin) -> None:
    fake.fail_next("vector_stores.create", status=200, raw_body=b"not json")
    with pytest.raises(StorageRejectedError) as caught:
        await plugin.minichat_storage_create_vector_store(
            provider_id="azure", tenant_id=TENANT, chat_id=CHAT_ID
        )
    assert caught.value.code == "response_parse_error"


async def test_a_wrong_key_is_permanent(fake: FakeOpenAI) -> None:
    plugin = configured(config_for(fake.base_url, api_key="wrong"))
    try:
        with pytest.raises(StorageRejectedError) as caught:
            await plugin.minichat_storage_create_vector_store(
                provider_id="azure", tenant_id=TENANT, chat_id=CHAT_ID
            )
    finally:
        await plugin.minichat_shutdown()
    assert caught.value.status == 401 and isinstance(caught.value, PermanentError)


async def test_a_stall_past_the_request_timeout_is_transient(fake: FakeOpenAI, document: Path) -> None:
    plugin = configured(config_for(fake.base_url), request_timeout_seconds=0.3)
    fake.fail_next("files.create", stall_seconds=30)
    try:
        with pytest.raises(TransientError, match="timed out"):
            await upload(plugin, document)
    finally:
        await plugin.minichat_shutdown()


async def test_connection_refused_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    plugin = configured(config_for(f"http://127.0.0.1:{port}"))
    try:
        with pytest.raises(TransientError):
            await plugin.minichat_storage_delete_vector_store(
                provider_id="azure", tenant_id=TENANT, vector_store_id="vs"
            )
    finally:
        await plugin.minichat_shutdown()


async def test_tenant_override_of_api_version(fake: FakeOpenAI) -> None:
    plugin = configured(
        config_for(fake.base_url, tenant_overrides={"tenant-b": {"api_version": "2024-10-21"}})
    )
    try:
        await plugin.minichat_storage_create_vector_store(
            provider_id="azure", tenant_id="tenant-b", chat_id=CHAT_ID
        )
    finally:
        await plugin.minichat_shutdown()
    assert fake.last("vector_stores.create").query == {"api-version": "2024-10-21"}


async def test_wired_through_the_entry_point_and_plugin_host(
    fake: FakeOpenAI, tmp_path: Path, document: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINICHAT_LOAD_PLUGINS", "policy_static,audit_log,storage_azure")
    raw = {
        "providers": {
            "local": {"kind": "local", "auth": "none"},
            "azure": {
                "kind": "openai_responses",
                "base_url": fake.base_url,
                "api_path": "/openai/deployments/{model}/responses",
                "auth": "api-key",
                "api_key": DEFAULT_API_KEY,
                "api_version": API_VERSION,
                "storage": "azure",
            },
        },
    }
    host = PluginHost(make_config(tmp_path, raw), load_entry_points=True)
    await host.start()
    try:
        assert host.resolve("storage", "azure").plugin == "storage_azure"
        stored = await host.call(
            "storage",
            "storage_upload_file",
            provider_id="azure",
            tenant_id=TENANT,
            chat_id=CHAT_ID,
            attachment_id=ATTACHMENT_ID,
            filename="a.txt",
            content_type="text/plain",
            path=str(document),
            purpose="assistants",
        )
        assert stored.file_id in fake.files
        await host.call(
            "storage", "storage_delete_file", provider_id="azure", tenant_id=TENANT, file_id=stored.file_id
        )
        assert stored.file_id not in fake.files
    finally:
        await host.aclose()
