"""storage_openai against the fake OpenAI server: requests on the wire, status mapping, retries, timeouts."""

from __future__ import annotations

import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from minichat_storage_openai.plugin import StorageOpenAIPlugin
from minichat_storage_openai.settings import StorageOpenAISettings

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


def config_for(base_url: str, **provider: object) -> Config:
    fields: dict[str, object] = {
        "kind": "openai_responses",
        "base_url": base_url,
        "api_key": DEFAULT_API_KEY,
        "storage": "openai",
    }
    fields.update(provider)
    return Config(
        providers={
            "openai": ProviderConfig(**fields),  # type: ignore[arg-type]
            "local": ProviderConfig(kind="local", auth="none"),  # stores elsewhere: ignored
        }
    )


async def configured(config: Config, **settings: object) -> StorageOpenAIPlugin:
    plugin = StorageOpenAIPlugin()
    plugin.minichat_configure(settings=StorageOpenAISettings(**settings), config=config)  # type: ignore[arg-type]
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
async def plugin(fake: FakeOpenAI) -> AsyncIterator[StorageOpenAIPlugin]:
    instance = await configured(config_for(fake.base_url), request_timeout_seconds=5.0)
    try:
        yield instance
    finally:
        await instance.minichat_shutdown()


DOCUMENT_BYTES = b"%PDF-1.4 quarterly report " * 1000


@pytest.fixture
def document(tmp_path: Path) -> Path:
    path = tmp_path / "upload.bin"
    path.write_bytes(DOCUMENT_BYTES)
    return path


async def upload(plugin: StorageOpenAIPlugin, path: Path, **overrides: str) -> object:
    arguments = {
        "provider_id": "openai",
        "tenant_id": TENANT,
        "chat_id": CHAT_ID,
        "attachment_id": ATTACHMENT_ID,
        "filename": "Quarterly Report.PDF",
        "content_type": "application/pdf",
        "path": str(path),
        "purpose": "assistants",
    }
    arguments.update(overrides)
    return await plugin.minichat_storage_upload_file(**arguments)


async def test_upload_is_a_multipart_post_streamed_from_the_file(
    fake: FakeOpenAI, plugin: StorageOpenAIPlugin, document: Path
) -> None:
    stored = await upload(plugin, document)
    record = fake.last("files.create")
    assert (record.method, record.path, record.family) == ("POST", "/v1/files", "openai")
    assert record.headers["authorization"] == f"Bearer {DEFAULT_API_KEY}"
    assert record.form == {
        "purpose": "assistants",
        "file": {
            "filename": f"{CHAT_ID}_{ATTACHMENT_ID}.pdf",
            "content_type": "application/pdf",
            "size": len(DOCUMENT_BYTES),
        },
    }
    file_id = stored.file_id  # type: ignore[attr-defined]
    assert fake.files[file_id].content == DOCUMENT_BYTES
    assert stored.size_bytes == len(DOCUMENT_BYTES)  # type: ignore[attr-defined]


async def test_upload_name_falls_back_to_the_content_type(
    fake: FakeOpenAI, plugin: StorageOpenAIPlugin, document: Path
) -> None:
    await upload(plugin, document, filename="notes", content_type="text/plain")
    assert fake.last("files.create").form["file"]["filename"] == f"{CHAT_ID}_{ATTACHMENT_ID}.txt"
    await upload(plugin, document, filename="blob", content_type="application/x-unknown")
    assert fake.last("files.create").form["file"]["filename"] == f"{CHAT_ID}_{ATTACHMENT_ID}.bin"


async def test_upload_of_a_missing_file_is_permanent(plugin: StorageOpenAIPlugin, tmp_path: Path) -> None:
    with pytest.raises(PermanentError):
        await upload(plugin, tmp_path / "gone.pdf")


async def test_vector_store_lifecycle(fake: FakeOpenAI, plugin: StorageOpenAIPlugin, document: Path) -> None:
    stored = await upload(plugin, document)
    file_id = stored.file_id  # type: ignore[attr-defined]
    vs_id = await plugin.minichat_storage_create_vector_store(
        provider_id="openai", tenant_id=TENANT, chat_id=CHAT_ID
    )
    assert vs_id in fake.vector_stores
    assert fake.last("vector_stores.create").body == {
        "name": f"minichat-chat-{CHAT_ID}",
        "metadata": {"tenant_id": TENANT, "chat_id": CHAT_ID},
    }
    await plugin.minichat_storage_add_file_to_vector_store(
        provider_id="openai",
        tenant_id=TENANT,
        vector_store_id=vs_id,
        file_id=file_id,
        attributes={"attachment_id": ATTACHMENT_ID},
    )
    record = fake.last("vector_stores.files.create")
    assert record.path == f"/v1/vector_stores/{vs_id}/files"
    assert record.body == {"file_id": file_id, "attributes": {"attachment_id": ATTACHMENT_ID}}
    assert fake.vector_stores[vs_id].files == {file_id: {"attachment_id": ATTACHMENT_ID}}

    await plugin.minichat_storage_delete_vector_store(
        provider_id="openai", tenant_id=TENANT, vector_store_id=vs_id
    )
    assert vs_id not in fake.vector_stores
    await plugin.minichat_storage_delete_file(provider_id="openai", tenant_id=TENANT, file_id=file_id)
    assert file_id not in fake.files
    # Already gone (404) counts as deleted.
    await plugin.minichat_storage_delete_vector_store(
        provider_id="openai", tenant_id=TENANT, vector_store_id=vs_id
    )
    await plugin.minichat_storage_delete_file(provider_id="openai", tenant_id=TENANT, file_id=file_id)
    assert [r.status for r in fake.by_op("files.delete")] == [200, 404]


async def test_adding_an_unknown_file_is_rejected(fake: FakeOpenAI, plugin: StorageOpenAIPlugin) -> None:
    vs_id = fake.seed_vector_store({})
    with pytest.raises(StorageRejectedError) as caught:
        await plugin.minichat_storage_add_file_to_vector_store(
            provider_id="openai", tenant_id=TENANT, vector_store_id=vs_id, file_id="file-nope", attributes={}
        )
    assert caught.value.code == "add_file_to_vector_store_failed" and caught.value.status == 404


OPS = {
    "files.create": "upload_file",
    "files.delete": "delete_file",
    "vector_stores.create": "create_vector_store",
    "vector_stores.files.create": "add_file_to_vector_store",
    "vector_stores.delete": "delete_vector_store",
}


async def call(fake: FakeOpenAI, plugin: StorageOpenAIPlugin, op: str, document: Path) -> object:
    if op == "files.create":
        return await upload(plugin, document)
    if op == "files.delete":
        file_id = fake.seed_file("x.txt", b"x")
        return await plugin.minichat_storage_delete_file(
            provider_id="openai", tenant_id=TENANT, file_id=file_id
        )
    if op == "vector_stores.create":
        return await plugin.minichat_storage_create_vector_store(
            provider_id="openai", tenant_id=TENANT, chat_id=CHAT_ID
        )
    if op == "vector_stores.files.create":
        file_id = fake.seed_file("x.txt", b"x")
        return await plugin.minichat_storage_add_file_to_vector_store(
            provider_id="openai",
            tenant_id=TENANT,
            vector_store_id=fake.seed_vector_store({}),
            file_id=file_id,
            attributes={"attachment_id": ATTACHMENT_ID},
        )
    return await plugin.minichat_storage_delete_vector_store(
        provider_id="openai", tenant_id=TENANT, vector_store_id=fake.seed_vector_store({})
    )


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("status", [500, 502, 503, 429, 408])
async def test_server_errors_and_throttling_are_transient(
    fake: FakeOpenAI, plugin: StorageOpenAIPlugin, document: Path, op: str, status: int
) -> None:
    fake.fail_next(op, status=status)
    with pytest.raises(TransientError) as caught:
        await call(fake, plugin, op, document)
    assert caught.value.code == "provider_unavailable"  # type: ignore[attr-defined]


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("status", [400, 401, 403, 409])
async def test_client_errors_are_permanent_with_the_operation_code(
    fake: FakeOpenAI, plugin: StorageOpenAIPlugin, document: Path, op: str, status: int
) -> None:
    fake.fail_next(op, status=status)
    with pytest.raises(StorageRejectedError) as caught:
        await call(fake, plugin, op, document)
    assert caught.value.code == f"{OPS[op]}_failed"
    assert caught.value.status == status
    assert isinstance(caught.value, PermanentError)


async def test_an_oversized_upload_is_file_too_large(
    fake: FakeOpenAI, plugin: StorageOpenAIPlugin, document: Path
) -> None:
    fake.fail_next("files.create", status=413)
    with pytest.raises(StorageRejectedError) as caught:
        await upload(plugin, document)
    assert caught.value.code == "file_too_large"


@pytest.mark.parametrize("op", list(OPS))
async def test_fail_twice_then_succeed(
    fake: FakeOpenAI, plugin: StorageOpenAIPlugin, document: Path, op: str
) -> None:
    fake.fail_next(op, times=2, status=503)
    for _ in range(2):
        with pytest.raises(TransientError):
            await call(fake, plugin, op, document)
    await call(fake, plugin, op, document)
    assert [r.status for r in fake.by_op(op)][-3:] == [503, 503, 200]


@pytest.mark.parametrize("op", ["files.create", "vector_stores.create", "vector_stores.files.create"])
async def test_a_response_that_is_not_json_is_permanent(
    fake: FakeOpenAI, plugin: StorageOpenAIPlugin, document: Path, op: str
) -> None:
    fake.fail_next(op, status=200, raw_body=b"<html>proxy error</html>")
    with pytest.raises(StorageRejectedError) as caught:
        await call(fake, plugin, op, document)
    assert caught.value.code == "response_parse_error"


async def test_a_response_without_an_id_is_permanent(fake: FakeOpenAI, plugin: StorageOpenAIPlugin) -> None:
    fake.fail_next("vector_stores.create", status=200, raw_body=b'{"object": "vector_store"}')
    with pytest.raises(StorageRejectedError) as caught:
        await plugin.minichat_storage_create_vector_store(
            provider_id="openai", tenant_id=TENANT, chat_id=CHAT_ID
        )
    assert caught.value.code == "response_parse_error"


async def test_a_stall_past_the_request_timeout_is_transient(fake: FakeOpenAI, document: Path) -> None:
    plugin = await configured(config_for(fake.base_url), request_timeout_seconds=0.3)
    fake.fail_next("files.delete", stall_seconds=30)
    try:
        with pytest.raises(TransientError, match="timed out"):
            await call(fake, plugin, "files.delete", document)
    finally:
        await plugin.minichat_shutdown()
    assert await fake.last("files.delete").wait_finished() == "client_disconnected"


async def test_connection_refused_is_transient(document: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    plugin = await configured(config_for(f"http://127.0.0.1:{port}"))
    try:
        with pytest.raises(TransientError):
            await plugin.minichat_storage_delete_file(
                provider_id="openai", tenant_id=TENANT, file_id="file-1"
            )
        with pytest.raises(TransientError):
            await upload(plugin, document)
    finally:
        await plugin.minichat_shutdown()


async def test_a_wrong_key_is_permanent(fake: FakeOpenAI) -> None:
    plugin = await configured(config_for(fake.base_url, api_key="sk-wrong"))
    try:
        with pytest.raises(StorageRejectedError) as caught:
            await plugin.minichat_storage_create_vector_store(
                provider_id="openai", tenant_id=TENANT, chat_id=CHAT_ID
            )
    finally:
        await plugin.minichat_shutdown()
    assert (caught.value.code, caught.value.status) == ("create_vector_store_failed", 401)


async def test_tenant_overrides_replace_key_and_base_url(fake: FakeOpenAI) -> None:
    other = FakeOpenAI(api_key="sk-tenant-b")
    await other.start()
    config = config_for(
        fake.base_url, tenant_overrides={"tenant-b": {"base_url": other.base_url, "api_key": "sk-tenant-b"}}
    )
    plugin = await configured(config)
    try:
        vs_id = await plugin.minichat_storage_create_vector_store(
            provider_id="openai", tenant_id="tenant-b", chat_id=CHAT_ID
        )
    finally:
        await plugin.minichat_shutdown()
        await other.stop()
    assert vs_id in other.vector_stores and not fake.vector_stores


async def test_a_provider_that_stores_elsewhere_is_a_configuration_error(plugin: StorageOpenAIPlugin) -> None:
    with pytest.raises(PermanentError, match="configuration_error"):
        await plugin.minichat_storage_create_vector_store(
            provider_id="local", tenant_id=TENANT, chat_id=CHAT_ID
        )


async def test_configure_requires_a_base_url() -> None:
    with pytest.raises(ValueError, match=r"providers\.openai\.base_url"):
        await configured(config_for(""))


async def test_wired_through_the_entry_point_and_plugin_host(
    fake: FakeOpenAI, tmp_path: Path, document: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINICHAT_LOAD_PLUGINS", "policy_static,audit_log,storage_openai")
    raw = {
        "providers": {
            "local": {"kind": "local", "auth": "none"},
            "openai": {
                "kind": "openai_responses",
                "base_url": fake.base_url,
                "api_key": DEFAULT_API_KEY,
                "storage": "openai",
            },
        },
        "plugins": {"settings": {"storage_openai": {"request_timeout_seconds": 5}}},
    }
    host = PluginHost(make_config(tmp_path, raw), load_entry_points=True)
    await host.start()
    try:
        assert host.resolve("storage", "openai").plugin == "storage_openai"
        stored = await host.call(
            "storage",
            "storage_upload_file",
            provider_id="openai",
            tenant_id=TENANT,
            chat_id=CHAT_ID,
            attachment_id=ATTACHMENT_ID,
            filename="a.txt",
            content_type="text/plain",
            path=str(document),
            purpose="assistants",
        )
        assert stored.file_id in fake.files
        vs_id = await host.call(
            "storage", "storage_create_vector_store", provider_id="openai", tenant_id=TENANT, chat_id=CHAT_ID
        )
        await host.call(
            "storage",
            "storage_delete_vector_store",
            provider_id="openai",
            tenant_id=TENANT,
            vector_store_id=vs_id,
        )
        assert vs_id not in fake.vector_stores
    finally:
        await host.aclose()
