"""Progress bars: on stderr when it is a terminal; never in a pipe, with `--json` or with `--no-progress`.

The terminal cases run `python -m minichat_host` with stderr on a pseudo-terminal; stdout stays a pipe
and must be the same as without a bar.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from minichat_host.db import migrate

from .helpers import has_bar, make_dead_letters, run, run_on_terminal, write_config

pytestmark = pytest.mark.slow  # spawns processes


@pytest.fixture
def fresh_config(tmp_path: Path) -> str:
    return write_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'minichat.db'}")


def test_migrate_shows_a_bar_over_the_revision_steps_on_a_terminal(fresh_config: str) -> None:
    head = migrate.head_revision()
    steps = migrate.planned_steps(None, "head")
    assert steps is not None and steps >= 2

    upgrade = run_on_terminal(["--config", fresh_config, "migrate", "upgrade"])
    assert upgrade.code == 0, upgrade.stderr
    assert has_bar(upgrade.stderr)
    assert "migrate upgrade: 100%" in upgrade.stderr and f"{steps}/{steps}" in upgrade.stderr
    assert "Running upgrade" not in upgrade.stderr, "the bar replaces the step lines"
    assert upgrade.stdout.endswith(f": <empty> -> {head} (head)\n"), "stdout as without a bar"

    downgrade = run_on_terminal(["--config", fresh_config, "migrate", "downgrade", "-1"])
    assert downgrade.code == 0, downgrade.stderr
    assert has_bar(downgrade.stderr) and "1/1" in downgrade.stderr


def test_migrate_on_a_terminal_with_json_or_no_progress_prints_step_lines(fresh_config: str) -> None:
    as_json = run_on_terminal(["--config", fresh_config, "migrate", "upgrade", "--json"])
    assert as_json.code == 0, as_json.stderr
    assert not has_bar(as_json.stderr)
    assert "minichat: Running upgrade  -> 0001_domain" in as_json.stderr
    assert json.loads(as_json.stdout)["current"] == migrate.head_revision()

    quiet = run_on_terminal(["--config", fresh_config, "migrate", "downgrade", "base", "--no-progress"])
    assert quiet.code == 0, quiet.stderr
    assert not has_bar(quiet.stderr)
    assert "minichat: Running downgrade 0001_domain -> " in quiet.stderr


def test_migrate_without_a_terminal_prints_step_lines_only(
    fresh_config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "--config", fresh_config, "migrate", "upgrade")
    assert code == 0
    assert not has_bar(err) and "%|" not in err and "\r" not in err
    assert err.splitlines() == [
        "minichat: Running upgrade  -> 0001_domain, Domain tables: chats, messages, turns, attachments, "
        "summaries, vector stores, quota usage, reactions.",
        "minichat: Running upgrade 0001_domain -> 0002_outbox, Outbox tables: bodies, partitions, incoming, "
        "outgoing, processor (cursor + lease), dead letters, vacuum.",
        "minichat: Running upgrade 0002_outbox -> 0003_chat_message_count, Chat message count: "
        "`chats.message_count`, kept by triggers on `messages`.",
        "minichat: Running upgrade 0003_chat_message_count -> 0004_chat_scoped_indexes, Chat-scoped indexes: "
        "`attachments (chat_id, created_at, id)` and `chat_vector_stores (chat_id)`.",
    ]
    assert out.endswith("-> 0004_chat_scoped_indexes (head)\n")


def test_replay_and_discard_show_a_bar_over_the_dead_letters_on_a_terminal(
    sqlite_migrated_db_url: str, tmp_path: Path
) -> None:
    asyncio.run(make_dead_letters(sqlite_migrated_db_url, 9))
    config = write_config(tmp_path, sqlite_migrated_db_url)
    letters = ["--config", config, "outbox", "dead-letters"]

    replay = run_on_terminal([*letters, "replay", "1", "2", "3", "4", "5", "--batch-size", "2"])
    assert replay.code == 0, replay.stderr
    assert has_bar(replay.stderr) and "replay: 100%" in replay.stderr and "5/5" in replay.stderr
    # stdout as without a bar (the ids in partition order).
    assert replay.stdout.startswith("replayed 5 dead letter(s): ") and replay.stdout.endswith("\n")
    assert sorted(int(x) for x in replay.stdout.split(": ")[1].split(", ")) == [1, 2, 3, 4, 5]

    as_json = run_on_terminal([*letters, "replay", "6", "--json"])
    assert as_json.code == 0, as_json.stderr
    assert as_json.stderr == "" and json.loads(as_json.stdout) == {"replayed": [6]}

    quiet = run_on_terminal([*letters, "discard", "7", "--no-progress"])
    assert quiet.code == 0, quiet.stderr
    assert quiet.stderr == "" and quiet.stdout == "discarded 1 dead letter(s): 7\n"

    discard = run_on_terminal([*letters, "discard", "--all", "--batch-size", "1"])
    assert discard.code == 0, discard.stderr
    assert has_bar(discard.stderr) and "discard: 100%" in discard.stderr and "2/2" in discard.stderr
    assert discard.stdout == "discarded 2 dead letter(s): 8, 9\n"
