"""Prepared statements: built and compiled once, then run with new values only.

Building a SQLAlchemy Core statement costs ~100-150 µs and looking it up in the compiled cache (its cache
key) more; the SQLite query itself is ~10 µs. The statements of the hot paths - a turn's start and
finalization, the hot JSON endpoints - are therefore written once, at import, with named bind parameters
(`sa.bindparam("chat_id")`, or the columns of an `insert()` / `update()` without values), and run with a
dict of values. The compiled form (SQL text, the order of the positional parameters, their bind
processors, the result metadata) is kept per dialect and, for INSERT/UPDATE, per set of columns given.

Only statements whose SQL does not depend on the values can be prepared: an expanding `IN` list cannot
(use `in_values` and an ordinary statement for those).

Compiling a statement takes ~0.5-1 ms, so the first turn of a fresh process used to spend ~10 ms compiling
its dozen statements while the first requests queued behind it. `prime(dialect)` (called once the
database is connected) compiles every statement built so far instead: those whose SQL is fixed, and an
INSERT / UPDATE without values for each `warm_columns` set it declares (the hot paths' column sets). A
statement written for one engine names it (`dialect=`) and is compiled only for that one.

    _GET_CHAT = Prepared(sa.select(chats.c.title).where(chats.c.id == sa.bindparam("chat_id")))
    row = await _GET_CHAT.fetch_one(db, chat_id=chat_id)
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert, Update

Mode = Literal["all", "one", "execute", "values"]

log = logging.getLogger("minichat.db")


class PreparedRunner(Protocol):
    """A `databases.Database` or connection opened by `connect_database` (db/engine.py)."""

    async def run_prepared(self, prepared: Prepared, values: Mapping[str, Any], mode: Mode) -> Any: ...


@dataclass(slots=True)
class CompiledForm:
    """What a backend keeps of one compilation (filled in further by the backend on first use)."""

    compiled: SQLCompiler
    # Values written into the statement itself (`state == "running"`): bound like the caller's values.
    fixed: dict[str, Any] = field(default_factory=dict)
    derived: dict[str, Any] = field(default_factory=dict)


class Prepared:
    """One statement with named bind parameters; see the module docstring."""

    __slots__ = (
        "__weakref__",
        "_columns_from_values",
        "_forms",
        "_warm_keys",
        "dialect",
        "json_rows",
        "name",
        "statement",
    )

    def __init__(
        self,
        statement: ClauseElement,
        name: str = "",
        *,
        dialect: str | None = None,
        warm_columns: Iterable[Iterable[str]] = (),
    ) -> None:
        self.statement = statement
        self.name = name
        self.dialect = dialect
        # SQLite's form of a listing's rows, one JSON array each (db/repos/json_rows.py; `fetch_values` only).
        self.json_rows: Any = None
        self._forms: dict[tuple[str, frozenset[str] | None], CompiledForm] = {}
        # INSERT / UPDATE written without .values(): the columns set are those a call gives values for.
        self._columns_from_values = (
            isinstance(statement, Insert | Update)
            and not statement._values
            and not getattr(statement, "_multi_values", ())
        )
        self._warm_keys: tuple[frozenset[str] | None, ...] = (
            tuple(frozenset(columns) for columns in warm_columns) if self._columns_from_values else (None,)
        )
        _BUILT.add(self)

    def column_keys(self, values: Mapping[str, Any]) -> frozenset[str] | None:
        return frozenset(values) if self._columns_from_values else None

    def form(self, dialect: Dialect, column_keys: frozenset[str] | None) -> CompiledForm:
        """The compiled form for `dialect` (and, for INSERT/UPDATE without values, these columns)."""
        key = (dialect.name, column_keys)
        found = self._forms.get(key)
        if found is None:
            compiled = self.statement.compile(
                dialect=dialect, column_keys=sorted(column_keys) if column_keys is not None else None
            )
            if not isinstance(compiled, SQLCompiler):
                raise TypeError(f"cannot prepare {type(self.statement).__name__}")
            if compiled.literal_execute_params or compiled.post_compile_params:
                raise ValueError(f"statement {self.name or self.statement} depends on its values")
            fixed = {
                name: bind.effective_value for bind, name in compiled.bind_names.items() if not bind.required
            }
            found = self._forms[key] = CompiledForm(compiled, fixed)
        return found

    def __repr__(self) -> str:
        return f"Prepared({self.name or str(self.statement)!r})"

    async def fetch_all(self, runner: Any, **values: Any) -> list[Any]:
        result: list[Any] = await _runner(runner).run_prepared(self, values, "all")
        return result

    async def fetch_one(self, runner: Any, **values: Any) -> Any:
        return await _runner(runner).run_prepared(self, values, "one")

    async def fetch_values(self, runner: Any, **values: Any) -> list[Sequence[Any]]:
        """Every row as the sequence of its values in column order, converted by the column types as a
        record's are, with no record around them: the pages of the hot listings build their own records from
        these by position (a record and its lookups cost ~0.6 µs a row, 20-100 rows a page). On SQLite, by
        the statement's `json_rows` form when it has one (tuples, then)."""
        result: list[Sequence[Any]] = await _runner(runner).run_prepared(self, values, "values")
        return result

    async def fetch_val(self, runner: Any, **values: Any) -> Any:
        row = await _runner(runner).run_prepared(self, values, "one")
        return None if row is None else row[0]

    async def execute(self, runner: Any, **values: Any) -> None:
        await _runner(runner).run_prepared(self, values, "execute")


# Every statement alive (module constants, and those cached factories have made): see `prime`.
_BUILT: weakref.WeakSet[Prepared] = weakref.WeakSet()


def prime(dialect: Dialect) -> int:
    """Compile every statement built so far for `dialect` (see the module docstring); the number compiled."""
    compiled = 0
    for prepared in list(_BUILT):
        if prepared.dialect not in (None, dialect.name):
            continue
        for column_keys in prepared._warm_keys:
            if (dialect.name, column_keys) in prepared._forms:
                continue
            try:
                prepared.form(dialect, column_keys)
            except (ValueError, TypeError, SQLAlchemyError) as exc:
                # It fails the same way on first use, where its caller sees it; start-up goes on.
                log.warning("cannot compile %r for %s: %s", prepared, dialect.name, exc)
                continue
            compiled += 1
    return compiled


def _runner(runner: Any) -> PreparedRunner:
    if not hasattr(runner, "run_prepared"):
        raise TypeError(f"{type(runner).__name__} cannot run prepared statements (use connect_database)")
    return runner  # type: ignore[no-any-return]


def bind_args(form: CompiledForm, names: Any, values: Mapping[str, Any]) -> list[Any]:
    """The positional arguments for `names`, each through its bind processor (e.g. UUID → hex on SQLite)."""
    processors: Any = form.compiled._bind_processors
    if form.fixed:
        values = {**form.fixed, **values}
    try:
        return [processors[name](values[name]) if name in processors else values[name] for name in names]
    except KeyError as exc:
        raise KeyError(f"missing value for bind parameter {exc.args[0]!r}") from None
