"""`minichat migrate upgrade [REV] | downgrade REV | current`: the schema of the configured database.

Progress goes to stderr: a bar over the revision steps on a terminal, otherwise (and with `--json` or
`--no-progress`) one line per step ("Running upgrade ... -> 0001_domain"). The result goes to stdout, as
JSON with `--json`. Exit codes: 0 ok, 1 the database or the revision was the problem, 2 bad config / URL.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from alembic.util.exc import CommandError
from tqdm import tqdm

from minichat_host.cli import progress
from minichat_host.cli.exit_codes import ExitCode
from minichat_host.config import load_config
from minichat_host.db import migrate
from minichat_host.db.engine import dialect_name, is_unavailable_error, masked_url

_ALEMBIC_PROGRESS_LOGGER = "alembic.runtime.migration"


class _OnlyRunningSteps(logging.Filter):
    """Keep Alembic's per-revision lines, drop its chatter ("Context impl ...", "Will assume ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage().startswith("Running ")


class _StepBar(logging.Handler):
    """Moves a progress bar one step when the next revision starts (and at the end), naming the step."""

    def __init__(self, bar: tqdm[Any]) -> None:
        super().__init__()
        self.bar = bar
        self.running = False
        self.addFilter(_OnlyRunningSteps())

    def emit(self, record: logging.LogRecord) -> None:
        self.step_done()
        self.running = True
        # "Running upgrade 0001_domain -> 0002_outbox, Outbox tables: ..." -> "0001_domain -> 0002_outbox"
        step = record.getMessage().split(",", 1)[0].split(" ", 2)[-1]
        self.bar.set_postfix_str(" ".join(step.split()), refresh=True)

    def step_done(self) -> None:
        if self.running:
            self.bar.update(1)
            self.running = False


@contextmanager
def _progress_to_stderr(args: argparse.Namespace, action: str, steps: int | None) -> Iterator[None]:
    logger = logging.getLogger(_ALEMBIC_PROGRESS_LOGGER)
    handler: logging.Handler
    bar: tqdm[Any] | None = None
    if progress.wanted(args):
        bar = progress.bar(args, f"migrate {action}", total=steps, unit="step")
        handler = _StepBar(bar)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("minichat: %(message)s"))
        handler.addFilter(_OnlyRunningSteps())
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
        if isinstance(handler, _StepBar):
            handler.step_done()  # the last step finished
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
        if bar is not None:
            bar.close()


def _status(url: str, before: str | None, after: str | None) -> dict[str, Any]:
    head = migrate.head_revision()
    return {
        "database": masked_url(url),
        "engine": dialect_name(url),
        "previous": before,
        "current": after,
        "head": head,
        "up_to_date": after == head,
    }


def _print(args: argparse.Namespace, status: dict[str, Any], action: str) -> None:
    if args.json:
        print(json.dumps(status, sort_keys=True))
        return
    current = status["current"] or "<empty: no revision>"
    marker = " (head)" if status["up_to_date"] else f" (head is {status['head']})"
    if action == "current":
        print(f"{status['database']}: {current}{marker}")
    elif status["previous"] == status["current"]:
        print(f"{status['database']}: already at {current}{marker}")
    else:
        print(f"{status['database']}: {status['previous'] or '<empty>'} -> {current}{marker}")


def _run(
    args: argparse.Namespace,
    action: str,
    change: Callable[[str], None] | None,
    steps: Callable[[str | None], int | None] | None = None,
) -> int:
    config = load_config(args.config)
    url = config.database_url()
    try:
        dialect_name(url)
    except ValueError as exc:
        print(f"minichat: config error: database.url: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        before = migrate.current(url)
        if change is not None:
            with _progress_to_stderr(args, action, steps(before) if steps is not None else None):
                change(url)
        after = migrate.current(url) if change is not None else before
    except CommandError as exc:
        print(f"minichat: migrate {action}: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    except Exception as exc:
        # One line, not a traceback: wrong credentials, a missing database, a locked file...
        reason = "is unavailable" if is_unavailable_error(exc) else f"failed ({type(exc).__name__})"
        print(f"minichat: migrate {action}: database {masked_url(url)} {reason}: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    _print(args, _status(url, before, after), action)
    return ExitCode.OK


def _upgrade(args: argparse.Namespace) -> int:
    revision: str = args.revision
    return _run(
        args,
        "upgrade",
        lambda url: migrate.upgrade(url, revision),
        lambda current: migrate.planned_steps(current, revision),
    )


def _downgrade(args: argparse.Namespace) -> int:
    revision: str = args.revision
    return _run(
        args,
        "downgrade",
        lambda url: migrate.downgrade(url, revision),
        lambda current: migrate.planned_steps(current, revision, downgrade=True),
    )


def _current(args: argparse.Namespace) -> int:
    return _run(args, "current", None)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser("migrate", help="database schema migrations (upgrade, downgrade, current)")
    msub = parser.add_subparsers(dest="migrate_command", required=True)

    upgrade = msub.add_parser("upgrade", help="upgrade the database (to the newest revision by default)")
    upgrade.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    upgrade.add_argument("--json", action="store_true", help="print the result as JSON")
    progress.add_progress_option(upgrade)
    upgrade.set_defaults(func=_upgrade)

    downgrade = msub.add_parser("downgrade", help="downgrade the database to a revision ('base' = empty)")
    downgrade.add_argument("revision", help="target revision: an id, 'base', or a relative step like -1")
    downgrade.add_argument("--json", action="store_true", help="print the result as JSON")
    progress.add_progress_option(downgrade)
    downgrade.set_defaults(func=_downgrade)

    current = msub.add_parser("current", help="show the revision the database is at")
    current.add_argument("--json", action="store_true", help="print the result as JSON")
    current.set_defaults(func=_current)
