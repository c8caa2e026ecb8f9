"""The built-in `local` storage plugin, called through the host like any vendor's storage."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from minichat_host import PermanentError
from minichat_host.plugins.manager import PluginHost
from minichat_host.plugins.types import SearchHit, StoredFile

HostFactory = Callable[..., Awaitable[PluginHost]]
TENANT = "00000000df515b429538d2b56b7ee953"


class Storage:
    """Thin wrapper: every call goes through `PluginHost.call` for provider `local`."""

    def __init__(self, host: PluginHost) -> None:
        self.host = host

    async def __call__(self, hook: str, **kwargs: Any) -> Any:
        return await self.host.call("storage", hook, provider_id="local", **kwargs)

    async def upload(self, path: Path, tenant_id: str = TENANT) -> StoredFile:
        stored: StoredFile = await self(
            "storage_upload_file",
            tenant_id=tenant_id,
            chat_id="c1",
            attachment_id="a1",
            filename=path.name,
            content_type="text/plain",
            path=str(path),
            purpose="assistants",
        )
        return stored


@pytest.fixture
async def storage(start_host: HostFactory) -> Storage:
    from minichat_host import constants

    assert constants.CAP_STORAGE == "storage"
    host = await start_host({"plugins": {"audit_vendor": ""}}, load_entry_points=True)
    return Storage(host)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / "uploads" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


async def test_upload_copies_into_the_tenant_directory_and_delete_removes_it(
    storage: Storage, tmp_path: Path
) -> None:
    source = write(tmp_path, "notes.txt", "hello")
    stored = await storage.upload(source)
    target = tmp_path / "files" / TENANT / stored.file_id
    assert target.read_text(encoding="utf-8") == "hello"
    assert stored.size_bytes == 5
    assert source.exists()  # the host's temporary upload is left to the host
    await storage("storage_delete_file", tenant_id=TENANT, file_id=stored.file_id)
    assert not target.exists()
    await storage("storage_delete_file", tenant_id=TENANT, file_id=stored.file_id)  # already gone = ok


async def test_vector_store_index_search_and_delete(storage: Storage, tmp_path: Path) -> None:
    fox = await storage.upload(
        write(tmp_path, "fox.txt", "The quick brown Fox jumps over the lazy dog. " * 3)
    )
    cat = await storage.upload(
        write(tmp_path, "cat.txt", "A cat sleeps. Nothing quick here, except the fox.")
    )
    other = await storage.upload(write(tmp_path, "other.txt", "Unrelated text about databases."))
    store = await storage("storage_create_vector_store", tenant_id=TENANT, chat_id="c1")
    assert (tmp_path / "vector_stores" / store).is_dir()
    for stored, attachment, name in (
        (fox, "att-fox", "fox.txt"),
        (cat, "att-cat", "cat.txt"),
        (other, "x", "o"),
    ):
        await storage(
            "storage_add_file_to_vector_store",
            tenant_id=TENANT,
            vector_store_id=store,
            file_id=stored.file_id,
            attributes={"attachment_id": attachment, "filename": name},
        )
    # Adding the same file again does not index it twice.
    await storage(
        "storage_add_file_to_vector_store",
        tenant_id=TENANT,
        vector_store_id=store,
        file_id=fox.file_id,
        attributes={"attachment_id": "att-fox", "filename": "fox.txt"},
    )
    hits: list[SearchHit] = await storage(
        "storage_search", tenant_id=TENANT, vector_store_id=store, query="QUICK fox", max_results=5
    )
    assert [h.attachment_id for h in hits] == ["att-fox", "att-cat"]  # both terms; fox.txt has more matches
    assert hits[0].filename == "fox.txt"
    assert "quick brown Fox" in hits[0].snippet
    assert hits[0].score == 1.0
    limited = await storage(
        "storage_search", tenant_id=TENANT, vector_store_id=store, query="fox", max_results=1
    )
    assert len(limited) == 1
    assert (
        await storage("storage_search", tenant_id=TENANT, vector_store_id=store, query="zebra", max_results=5)
        == []
    )
    await storage("storage_delete_vector_store", tenant_id=TENANT, vector_store_id=store)
    assert not (tmp_path / "vector_stores" / store).exists()
    await storage("storage_delete_vector_store", tenant_id=TENANT, vector_store_id=store)  # already gone = ok
    assert (
        await storage("storage_search", tenant_id=TENANT, vector_store_id=store, query="fox", max_results=5)
        == []
    )


async def test_another_tenant_cannot_use_the_store(storage: Storage, tmp_path: Path) -> None:
    stored = await storage.upload(write(tmp_path, "a.txt", "secret plans"))
    store = await storage("storage_create_vector_store", tenant_id=TENANT, chat_id="c1")
    await storage(
        "storage_add_file_to_vector_store",
        tenant_id=TENANT,
        vector_store_id=store,
        file_id=stored.file_id,
        attributes={"attachment_id": "a"},
    )
    other = "11111111111111111111111111111111"
    assert (
        await storage("storage_search", tenant_id=other, vector_store_id=store, query="plans", max_results=5)
        == []
    )
    with pytest.raises(PermanentError, match="does not exist"):
        await storage(
            "storage_add_file_to_vector_store",
            tenant_id=other,
            vector_store_id=store,
            file_id=stored.file_id,
            attributes={},
        )
    await storage("storage_delete_vector_store", tenant_id=other, vector_store_id=store)
    assert (tmp_path / "vector_stores" / store).is_dir()


async def test_path_escapes_are_refused(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="invalid tenant id"):
        await storage.upload(write(tmp_path, "a.txt", "x"), tenant_id="../../etc")
    with pytest.raises(PermanentError, match="invalid file id"):
        await storage("storage_delete_file", tenant_id=TENANT, file_id="../x")


async def test_missing_upload_source_is_permanent(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="does not exist"):
        await storage.upload(tmp_path / "missing.txt")
