"""A compiled-statement cache for the `databases` backends (SQLite and PostgreSQL).

`databases` 0.9 compiles every SQLAlchemy statement from scratch on every execution and rebuilds its
result-column maps (which renders each column to a string) for every fetch: on the hot JSON endpoints that
was about 40% of the server's CPU (bench/api.py, profiled with py-spy). This cache does what SQLAlchemy's
own engine does: the statement's cache key (its shape, without the bound values) finds the compiled form,
and the values of this statement are pulled out of the key and bound to it (`construct_params` with the
extracted parameters). Statements whose SQL depends on the values (expanding `IN` lists, literal-rendered
parameters) or that have no cache key are not cached: the caller compiles those as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.ddl import DDLElement
from sqlalchemy.util import LRUCache

DEFAULT_CAPACITY: Final = 1000


@dataclass(slots=True)
class CachedStatement:
    """A compiled statement and what the backends derive from it once (filled in lazily by them)."""

    compiled: SQLCompiler
    derived: dict[str, Any] = field(default_factory=dict)


class StatementCache:
    """Compiled statements of one dialect by SQLAlchemy cache key (LRU, `capacity` shapes)."""

    def __init__(self, dialect: Dialect, capacity: int = DEFAULT_CAPACITY) -> None:
        self._dialect = dialect
        self._entries: LRUCache[Any, CachedStatement | None] = LRUCache(capacity)

    def lookup(self, query: ClauseElement) -> tuple[CachedStatement, Mapping[str, Any]] | None:
        """The cached compiled form of `query` and its bound values, or None: compile it the usual way."""
        if isinstance(query, DDLElement):
            return None
        cache_key = query._generate_cache_key()
        if cache_key is None:
            return None
        key, extracted, collected = cache_key
        if key in self._entries:
            entry = self._entries[key]
        else:
            compiled = query._compiler(
                self._dialect, cache_key=cache_key, column_keys=[], for_executemany=False
            )
            assert isinstance(compiled, SQLCompiler)
            # SQL that changes with the values (IN lists, literal execution) cannot be shared.
            shareable = not (compiled.post_compile_params or compiled.literal_execute_params)
            entry = CachedStatement(compiled) if shareable else None
            self._entries[key] = entry
        if entry is None:
            return None
        params = entry.compiled.construct_params(extracted_parameters=extracted, _collected_params=collected)
        return entry, params
