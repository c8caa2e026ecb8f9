"""The local full-text index behind the `local` storage's vector stores: SQLite FTS5 in its own file.

Why a separate SQLite file (on both database engines) rather than PostgreSQL full-text search:
- the `local` storage keeps the indexed files on this host's disk, so it is a single-host backend by
  nature; an index next to the files shares their lifetime and their backup, and never disagrees with them;
- one code path for SQLite and PostgreSQL deployments, with BM25 ranking and `snippet()` built in;
- the shared schema (and its migrations) stays free of a derived cache that can be rebuilt from the files.
Deployments with several replicas use a hosted storage (OpenAI / Azure), whose search is the provider's.

Layout: `docs` has one row per (tenant, vector store, file) with the attachment id and filename from the
file's attributes; `chunks` (FTS5, porter stemming over unicode61) holds the text in ~1,000-character
chunks. Queries OR the terms of the question (each quoted, so user text is never FTS syntax) and rank by
BM25; a hit's `score` is the share of the query's terms its chunk matches. With `fallback=True` a query
that matches nothing returns the opening chunk of each file instead, as a hosted vector search always
answers with its nearest chunks. Every method opens its own short-lived connection, so the index can be
used from any thread; WAL and a busy timeout let readers and one writer overlap.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

from minichat_host.plugins.types import SearchHit
from minichat_host.storage.text import extract_text

CHUNK_CHARS: Final = 1000
# A chunk's rowid is `doc_id * _ROWS_PER_DOC + chunk_no`, so a document's chunks are one rowid range and
# deleting them needs no scan of the (unindexed) doc_id column.
_ROWS_PER_DOC: Final = 1 << 16
MAX_QUERY_TERMS: Final = 32
_SNIPPET_TOKENS: Final = 32
_FALLBACK_SNIPPET_CHARS: Final = 240
_TERM: Final = re.compile(r"\w+", re.UNICODE)

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS docs (
        id INTEGER PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        vector_store_id TEXT NOT NULL,
        file_id TEXT NOT NULL,
        attachment_id TEXT NOT NULL DEFAULT '',
        filename TEXT NOT NULL DEFAULT '',
        added_at REAL NOT NULL,
        UNIQUE (tenant_id, vector_store_id, file_id)
    )""",
    "CREATE INDEX IF NOT EXISTS docs_by_file ON docs (tenant_id, file_id)",
    """CREATE VIRTUAL TABLE IF NOT EXISTS chunks USING fts5(
        body, doc_id UNINDEXED, chunk_no UNINDEXED, tokenize = 'porter unicode61 remove_diacritics 2'
    )""",
)


def chunk_text(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """`text` cut into pieces of about `size` characters, at whitespace where there is some."""
    chunks: list[str] = []
    start = 0
    length = len(text)
    while start < length:
        end = min(start + size, length)
        if end < length:
            cut = text.rfind(" ", start + size // 2, end)
            cut = max(cut, text.rfind("\n", start + size // 2, end))
            if cut > start:
                end = cut
        piece = text[start:end].strip()
        if piece:
            chunks.append(piece)
        start = end
    return chunks


def query_terms(query: str) -> list[str]:
    """The distinct lower-cased word terms of `query`, in order, at most `MAX_QUERY_TERMS`."""
    seen: dict[str, None] = {}
    for term in _TERM.findall(query.lower()):
        seen.setdefault(term, None)
        if len(seen) >= MAX_QUERY_TERMS:
            break
    return list(seen)


def _fts_query(terms: list[str]) -> str:
    # Each term quoted: user text must never be read as FTS5 syntax (NEAR, column filters, `*`).
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)


def _term_shares(db: sqlite3.Connection, terms: list[str], rowids: list[int]) -> dict[int, float]:
    """For each chunk, the share of `terms` it matches (with the index's own stemming), rounded."""
    matched = dict.fromkeys(rowids, 0)
    marks = ", ".join("?" for _ in rowids)
    for term in terms:
        for (rowid,) in db.execute(
            f"SELECT rowid FROM chunks WHERE chunks MATCH ? AND rowid IN ({marks})",
            (_fts_query([term]), *rowids),
        ):
            matched[rowid] += 1
    return {rowid: round(count / len(terms), 4) for rowid, count in matched.items()}


class LocalIndex:
    """Full-text index of the local vector stores, stored in one SQLite file."""

    def __init__(self, path: Path, *, busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._ready = False

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=self._busy_timeout_ms / 1000, isolation_level=None)
        try:
            if not self._ready:
                connection.execute("PRAGMA journal_mode=WAL")
                for statement in _SCHEMA:
                    connection.execute(statement)
                self._ready = True
            yield connection
        finally:
            connection.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    # --- writes ---------------------------------------------------------------------------------
    def add_file(
        self,
        tenant_id: str,
        vector_store_id: str,
        file_id: str,
        path: Path,
        attributes: Mapping[str, str] | None = None,
    ) -> int:
        """Index the file at `path` into the store (replacing an earlier copy); returns the chunk count."""
        attrs = dict(attributes or {})
        chunks = chunk_text(extract_text(path))
        with self._write() as db:
            self._delete_docs(
                db,
                "tenant_id = ? AND vector_store_id = ? AND file_id = ?",
                (tenant_id, vector_store_id, file_id),
            )
            cursor = db.execute(
                "INSERT INTO docs (tenant_id, vector_store_id, file_id, attachment_id, filename, added_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    tenant_id,
                    vector_store_id,
                    file_id,
                    attrs.get("attachment_id", ""),
                    attrs.get("filename", ""),
                    time.time(),
                ),
            )
            doc_id = int(cursor.lastrowid or 0)
            db.executemany(
                "INSERT INTO chunks (rowid, body, doc_id, chunk_no) VALUES (?, ?, ?, ?)",
                [
                    (doc_id * _ROWS_PER_DOC + number, body, doc_id, number)
                    for number, body in enumerate(chunks[:_ROWS_PER_DOC])
                ],
            )
        return len(chunks)

    def remove_file(self, tenant_id: str, file_id: str) -> None:
        """Forget the file in every store of the tenant (a deleted file is never found again)."""
        with self._write() as db:
            self._delete_docs(db, "tenant_id = ? AND file_id = ?", (tenant_id, file_id))

    def drop_store(self, tenant_id: str, vector_store_id: str) -> None:
        with self._write() as db:
            self._delete_docs(db, "tenant_id = ? AND vector_store_id = ?", (tenant_id, vector_store_id))

    @staticmethod
    def _delete_docs(db: sqlite3.Connection, where: str, params: tuple[str, ...]) -> None:
        ids = [row[0] for row in db.execute(f"SELECT id FROM docs WHERE {where}", params)]
        for doc_id in ids:
            first = doc_id * _ROWS_PER_DOC
            db.execute("DELETE FROM chunks WHERE rowid BETWEEN ? AND ?", (first, first + _ROWS_PER_DOC - 1))
            db.execute("DELETE FROM docs WHERE id = ?", (doc_id,))

    # --- reads ----------------------------------------------------------------------------------
    def file_count(self, tenant_id: str, vector_store_id: str) -> int:
        with self._connect() as db:
            row = db.execute(
                "SELECT count(*) FROM docs WHERE tenant_id = ? AND vector_store_id = ?",
                (tenant_id, vector_store_id),
            ).fetchone()
        return int(row[0])

    def search(
        self, tenant_id: str, vector_store_id: str, query: str, max_results: int, *, fallback: bool = False
    ) -> list[SearchHit]:
        """The best chunks of the store's files for `query` (see the module doc), best first."""
        if max_results <= 0:
            return []
        terms = query_terms(query)
        with self._connect() as db:
            rows: list[tuple[str, str, str, str, int]] = []
            if terms:
                rows = db.execute(
                    "SELECT d.attachment_id, d.filename, d.file_id, "
                    f"snippet(chunks, 0, '', '', '…', {_SNIPPET_TOKENS}), chunks.rowid "
                    "FROM chunks JOIN docs AS d ON d.id = chunks.doc_id "
                    "WHERE chunks MATCH ? AND d.tenant_id = ? AND d.vector_store_id = ? "
                    "ORDER BY bm25(chunks) LIMIT ?",
                    (_fts_query(terms), tenant_id, vector_store_id, max_results),
                ).fetchall()
            if rows or not fallback:
                shares = _term_shares(db, terms, [row[4] for row in rows]) if rows else {}
                return [
                    SearchHit(
                        attachment_id=a,
                        filename=f or file_id,
                        snippet=" ".join(s.split()),
                        score=shares[rowid],
                    )
                    for a, f, file_id, s, rowid in rows
                ]
            opening = db.execute(
                "SELECT d.attachment_id, d.filename, d.file_id, c.body "
                f"FROM docs AS d JOIN chunks AS c ON c.rowid = d.id * {_ROWS_PER_DOC} "
                "WHERE d.tenant_id = ? AND d.vector_store_id = ? ORDER BY d.added_at DESC, d.id DESC LIMIT ?",
                (tenant_id, vector_store_id, max_results),
            ).fetchall()
        return [
            SearchHit(attachment_id=a, filename=f or file_id, snippet=_opening(body), score=0.0)
            for a, f, file_id, body in opening
        ]


def _opening(body: str) -> str:
    text = " ".join(body.split())
    if len(text) <= _FALLBACK_SNIPPET_CHARS:
        return text
    return text[:_FALLBACK_SNIPPET_CHARS].rsplit(" ", 1)[0] + "…"
