"""Alembic migrations on SQLite and PostgreSQL: up, down, up again, and no drift from tables.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from minichat_host.db import migrate
from minichat_host.db.engine import create_async_sa_engine
from minichat_host.db.schema import metadata


async def _table_names(url: str) -> set[str]:
    engine = create_async_sa_engine(url)
    try:
        async with engine.connect() as connection:
            names: list[str] = await connection.run_sync(lambda sync: sa.inspect(sync).get_table_names())
            return set(names)
    finally:
        await engine.dispose()


async def _execute(url: str, statement: str) -> None:
    engine = create_async_sa_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(sa.text(statement))
    finally:
        await engine.dispose()


def _revisions_oldest_first() -> list[str]:
    script = ScriptDirectory.from_config(migrate.alembic_config())
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


MODEL_TABLES = {table.name for table in metadata.sorted_tables}


def test_revision_chain_starts_with_the_domain_revision() -> None:
    revisions = _revisions_oldest_first()
    assert revisions[0] == "0001_domain"
    assert revisions[-1] == migrate.head_revision()


async def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    assert await migrate.acurrent(db_url) is None

    await migrate.aupgrade(db_url)
    assert await migrate.acurrent(db_url) == migrate.head_revision()
    assert await _table_names(db_url) == MODEL_TABLES | {"alembic_version"}

    await migrate.adowngrade(db_url, "base")
    assert await migrate.acurrent(db_url) is None
    assert await _table_names(db_url) == {"alembic_version"}

    await migrate.aupgrade(db_url)
    assert await migrate.acurrent(db_url) == migrate.head_revision()
    assert await _table_names(db_url) == MODEL_TABLES | {"alembic_version"}
    assert await migrate.aschema_diff(db_url) == []


async def test_every_revision_steps_up_and_down(db_url: str) -> None:
    revisions = _revisions_oldest_first()
    for revision in revisions:
        await migrate.aupgrade(db_url, revision)
        assert await migrate.acurrent(db_url) == revision
    for expected in [*reversed(revisions[:-1]), None]:
        await migrate.adowngrade(db_url, "-1")
        assert await migrate.acurrent(db_url) == expected


async def test_migrated_schema_matches_the_table_definitions(db_url: str) -> None:
    await migrate.aupgrade(db_url)
    assert await migrate.aschema_diff(db_url) == []


async def test_schema_diff_reports_a_missing_index(db_url: str) -> None:
    # The drift check above is only worth something if it notices a difference.
    await migrate.aupgrade(db_url)
    await _execute(db_url, "DROP INDEX uq_chat_turns_one_running")
    diff = await migrate.aschema_diff(db_url)
    assert [(entry[0], entry[1].name) for entry in diff] == [("add_index", "uq_chat_turns_one_running")]


async def test_migrated_fixture_is_at_head(migrated_db_url: str) -> None:
    assert await migrate.acurrent(migrated_db_url) == migrate.head_revision()
    assert await migrate.aschema_diff(migrated_db_url) == []


async def test_sync_functions_work_inside_a_running_event_loop(sqlite_db_url: str) -> None:
    migrate.upgrade(sqlite_db_url)
    assert migrate.current(sqlite_db_url) == migrate.head_revision()
    migrate.downgrade(sqlite_db_url, "base")
    assert migrate.current(sqlite_db_url) is None


def test_sync_functions_without_an_event_loop(sqlite_db_url: str) -> None:
    migrate.upgrade(sqlite_db_url)
    assert migrate.current(sqlite_db_url) == migrate.head_revision()
    assert migrate.schema_diff(sqlite_db_url) == []


def test_current_does_not_create_a_missing_sqlite_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent" / "minichat.db"
    assert migrate.current(f"sqlite+aiosqlite:///{missing}") is None
    assert not missing.parent.exists()


async def test_concurrent_upgrades_in_one_process(db_url: str) -> None:
    # e.g. two app instances starting in one test process: Alembic's global proxies must not be shared.
    await asyncio.gather(*(migrate.aupgrade(db_url) for _ in range(3)))
    assert await migrate.acurrent(db_url) == migrate.head_revision()
    assert await migrate.aschema_diff(db_url) == []


@pytest.mark.slow
def test_concurrent_upgrades_from_several_processes_on_postgresql(pg_db_url: str, tmp_path: Path) -> None:
    # Replicas starting together: the advisory lock makes the later ones find the schema already there.
    config_file = tmp_path / "minichat.yaml"
    config_file.write_text(f"database:\n  url: {json.dumps(pg_db_url)}\n", encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        "minichat_host",
        "--config",
        str(config_file),
        "migrate",
        "upgrade",
        "--json",
    ]
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)
    ]
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        assert json.loads(stdout)["current"] == migrate.head_revision()
    assert migrate.schema_diff(pg_db_url) == []
