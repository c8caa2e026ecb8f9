"""Built-in `local` storage: files and "vector stores" as plain files under the data directory.

Layout: `<data_dir>/files/<tenant>/<file_id>` holds uploaded bytes; `<data_dir>/vector_stores/<id>/` holds
`manifest.json` with the owning tenant and the indexed `(file_id, attributes)` pairs. Search runs on the
local full-text index (`minichat_host.storage.LocalIndex`, SQLite FTS5 in `<data_dir>/index/`), which
indexed files join when they are added to a store and leave when the file or the store is deleted.
The hooks are synchronous file I/O, so the host runs them in worker threads; a lock keeps concurrent
manifest updates from losing entries.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

from minichat_host import constants
from minichat_host.plugins.errors import PermanentError
from minichat_host.plugins.hookspecs import hookimpl
from minichat_host.plugins.types import Capability, SearchHit, StoredFile
from minichat_host.storage import LocalIndex, index_path

VENDOR = "local"
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _segment(value: str, what: str) -> str:
    """Refuse ids that could escape their directory (`..`, `/`)."""
    if not _SAFE_SEGMENT.match(value) or value in {".", ".."}:
        raise PermanentError(f"invalid {what} {value!r}")
    return value


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LocalStoragePlugin:
    """Storage for vendor `local`: the embedded default, no network."""

    def __init__(self) -> None:
        self._data_dir: Path | None = None
        self._index: LocalIndex | None = None
        self._lock = threading.Lock()

    @hookimpl
    def minichat_capabilities(self) -> list[Capability]:
        return [Capability(capability=constants.CAP_STORAGE, vendor=VENDOR, priority=100)]

    @hookimpl
    def minichat_configure(self, data_dir: Path) -> None:
        self._data_dir = Path(data_dir)
        self._index = LocalIndex(index_path(self._data_dir))

    # --- paths ----------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        if self._data_dir is None:
            raise PermanentError("local storage is not configured (the host did not call minichat_configure)")
        return self._data_dir

    @property
    def index(self) -> LocalIndex:
        if self._index is None:
            raise PermanentError("local storage is not configured (the host did not call minichat_configure)")
        return self._index

    def _file_path(self, tenant_id: str, file_id: str) -> Path:
        return self.data_dir / "files" / _segment(tenant_id, "tenant id") / _segment(file_id, "file id")

    def _store_dir(self, vector_store_id: str) -> Path:
        return self.data_dir / "vector_stores" / _segment(vector_store_id, "vector store id")

    def _read_manifest(self, tenant_id: str, vector_store_id: str) -> dict[str, Any] | None:
        """The store's manifest, or None when it does not exist or belongs to another tenant."""
        path = self._store_dir(vector_store_id) / "manifest.json"
        try:
            manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return manifest if manifest.get("tenant_id") == tenant_id else None

    # --- files ----------------------------------------------------------------------------------
    @hookimpl
    def minichat_storage_upload_file(self, tenant_id: str, path: str) -> StoredFile:
        file_id = f"file-{uuid.uuid4().hex}"
        target = self._file_path(tenant_id, file_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{file_id}.tmp")
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            raise PermanentError(f"upload source {path!r} does not exist") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return StoredFile(file_id=file_id, size_bytes=target.stat().st_size)

    @hookimpl
    def minichat_storage_delete_file(self, tenant_id: str, file_id: str) -> None:
        self._file_path(tenant_id, file_id).unlink(missing_ok=True)
        self.index.remove_file(tenant_id, file_id)

    # --- vector stores --------------------------------------------------------------------------
    @hookimpl
    def minichat_storage_create_vector_store(self, tenant_id: str, chat_id: str) -> str:
        vector_store_id = f"vs-{uuid.uuid4().hex}"
        directory = self._store_dir(vector_store_id)
        directory.mkdir(parents=True)
        _write_json_atomically(
            directory / "manifest.json", {"tenant_id": tenant_id, "chat_id": chat_id, "files": []}
        )
        return vector_store_id

    @hookimpl
    def minichat_storage_add_file_to_vector_store(
        self, tenant_id: str, vector_store_id: str, file_id: str, attributes: dict[str, str]
    ) -> None:
        _segment(file_id, "file id")
        with self._lock:
            manifest = self._read_manifest(tenant_id, vector_store_id)
            if manifest is None:
                raise PermanentError(f"vector store {vector_store_id!r} does not exist")
            # Replace an earlier entry for the same file: the outbox may deliver twice.
            files = [f for f in manifest["files"] if f["file_id"] != file_id]
            files.append({"file_id": file_id, "attributes": dict(attributes)})
            manifest["files"] = files
            try:
                self.index.add_file(
                    tenant_id, vector_store_id, file_id, self._file_path(tenant_id, file_id), attributes
                )
            except FileNotFoundError:
                raise PermanentError(f"file {file_id!r} does not exist") from None
            _write_json_atomically(self._store_dir(vector_store_id) / "manifest.json", manifest)

    @hookimpl
    def minichat_storage_delete_vector_store(self, tenant_id: str, vector_store_id: str) -> None:
        with self._lock:
            if self._read_manifest(tenant_id, vector_store_id) is not None:
                self.index.drop_store(tenant_id, vector_store_id)
                shutil.rmtree(self._store_dir(vector_store_id), ignore_errors=True)

    @hookimpl
    def minichat_storage_search(
        self, tenant_id: str, vector_store_id: str, query: str, max_results: int
    ) -> list[SearchHit]:
        if self._read_manifest(tenant_id, vector_store_id) is None:
            return []
        return self.index.search(tenant_id, vector_store_id, query, max_results)
