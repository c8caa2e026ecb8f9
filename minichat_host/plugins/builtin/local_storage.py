"""Built-in `local` storage: files and "vector stores" as plain files under the data directory.

Layout: `<data_dir>/files/<tenant>/<file_id>` holds uploaded bytes; `<data_dir>/vector_stores/<id>/` holds
`manifest.json` with the owning tenant and the indexed `(file_id, attributes)` pairs. Search is a simple
case-insensitive term match over the text of the indexed files (a full-text index replaces it later).
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

VENDOR = "local"
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TERM = re.compile(r"\w+", re.UNICODE)
_SNIPPET_CHARS = 240
_MAX_TEXT_BYTES = 4 * 1024 * 1024  # search reads at most this much of each file


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
        self._lock = threading.Lock()

    @hookimpl
    def minichat_capabilities(self) -> list[Capability]:
        return [Capability(capability=constants.CAP_STORAGE, vendor=VENDOR, priority=100)]

    @hookimpl
    def minichat_configure(self, data_dir: Path) -> None:
        self._data_dir = Path(data_dir)

    # --- paths ----------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        if self._data_dir is None:
            raise PermanentError("local storage is not configured (the host did not call minichat_configure)")
        return self._data_dir

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
            _write_json_atomically(self._store_dir(vector_store_id) / "manifest.json", manifest)

    @hookimpl
    def minichat_storage_delete_vector_store(self, tenant_id: str, vector_store_id: str) -> None:
        with self._lock:
            if self._read_manifest(tenant_id, vector_store_id) is not None:
                shutil.rmtree(self._store_dir(vector_store_id), ignore_errors=True)

    @hookimpl
    def minichat_storage_search(
        self, tenant_id: str, vector_store_id: str, query: str, max_results: int
    ) -> list[SearchHit]:
        terms = sorted({t.lower() for t in _TERM.findall(query)})
        manifest = self._read_manifest(tenant_id, vector_store_id)
        if not terms or manifest is None or max_results <= 0:
            return []
        ranked: list[tuple[float, int, SearchHit]] = []
        for entry in manifest["files"]:
            text = self._read_text(tenant_id, entry["file_id"])
            if text is None:
                continue
            lowered = text.lower()
            counts = {term: lowered.count(term) for term in terms}
            matched = [term for term in terms if counts[term]]
            if not matched:
                continue
            score = len(matched) / len(terms)
            first = min(lowered.find(term) for term in matched)
            attributes: dict[str, str] = entry.get("attributes", {})
            hit = SearchHit(
                attachment_id=attributes.get("attachment_id", ""),
                filename=attributes.get("filename", entry["file_id"]),
                snippet=_snippet(text, first),
                score=score,
            )
            ranked.append((score, sum(counts.values()), hit))
        ranked.sort(key=lambda r: (r[0], r[1]), reverse=True)
        return [hit for _, _, hit in ranked[:max_results]]

    def _read_text(self, tenant_id: str, file_id: str) -> str | None:
        try:
            with self._file_path(tenant_id, file_id).open("rb") as handle:
                return handle.read(_MAX_TEXT_BYTES).decode("utf-8", errors="replace")
        except FileNotFoundError:
            return None


def _snippet(text: str, position: int) -> str:
    """About `_SNIPPET_CHARS` characters of `text` around `position`, whitespace collapsed."""
    start = max(0, position - _SNIPPET_CHARS // 3)
    piece = " ".join(text[start : start + _SNIPPET_CHARS].split())
    return ("…" if start > 0 else "") + piece + ("…" if start + _SNIPPET_CHARS < len(text) else "")
