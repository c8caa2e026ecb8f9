"""`minichat outbox status` and `minichat outbox dead-letters list|show|replay|discard`.

These only read and write the outbox tables, so they work while the server runs (PostgreSQL: any number
of processes; SQLite: short transactions next to the one server process). A replay puts the messages back
at the end of their partitions and sequences them at once; the running scheduler delivers them on its
next poll. `replay` and `discard` work in batches (`--batch-size`), one transaction each, with a progress
bar over the total on a terminal (progress.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import databases
import msgspec

from minichat_host.cli import progress
from minichat_host.cli.exit_codes import ExitCode
from minichat_host.config import ConfigError, load_config
from minichat_host.db.engine import DialectName, connect_database, dialect_name
from minichat_host.outbox import dead_letters as dl
from minichat_host.outbox.models import DeadLetter, DeadLetterFilter, QueueStatus
from minichat_host.outbox.status import queue_status

T = TypeVar("T")
STATUSES = ("pending", "reprocessing", "resolved", "discarded", "all")
DEFAULT_BATCH_SIZE = 500


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def register(sub: argparse._SubParsersAction[Any]) -> None:
    outbox = sub.add_parser("outbox", help="inspect the outbox and manage dead letters")
    commands = outbox.add_subparsers(dest="outbox_command", required=True)

    status = commands.add_parser(
        "status", help="per queue and partition: backlog, lease, attempts, last error"
    )
    status.add_argument("--queue", action="append", help="only this queue (repeatable)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_status)

    letters = commands.add_parser("dead-letters", help="list, show, replay or discard rejected messages")
    actions = letters.add_subparsers(dest="dead_letters_command", required=True)

    listing = actions.add_parser("list", help="dead letters, newest failure first")
    listing.add_argument("--queue", help="only this queue")
    listing.add_argument("--status", choices=STATUSES, default="pending", help="default: pending")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_list)

    show = actions.add_parser("show", help="one dead letter with its payload")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_show)

    for name, handler, verb in (
        ("replay", _replay, "put back at the end of its partition (in order) and mark resolved"),
        ("discard", _discard, "mark discarded (kept as a record, never delivered)"),
    ):
        action = actions.add_parser(name, help=f"{verb}: pending dead letters by id, or --all")
        action.add_argument("ids", type=int, nargs="*", metavar="ID")
        action.add_argument("--all", action="store_true", help="every pending dead letter (of --queue)")
        action.add_argument("--queue", help="with --all: only this queue")
        action.add_argument(
            "--batch-size",
            type=_positive_int,
            default=DEFAULT_BATCH_SIZE,
            metavar="N",
            help=f"dead letters per transaction (default: {DEFAULT_BATCH_SIZE})",
        )
        action.add_argument("--json", action="store_true")
        progress.add_progress_option(action)
        action.set_defaults(func=handler)


# --- plumbing ---------------------------------------------------------------------------------------------


def _run(args: argparse.Namespace, work: Callable[[databases.Database, DialectName], Awaitable[T]]) -> T:
    url = load_config(args.config).database_url()
    try:
        dialect_name(url)
    except ValueError as exc:
        raise ConfigError(f"database.url: {exc}") from None

    async def main() -> T:
        database = await connect_database(url)
        try:
            return await work(database, dialect_name(url))
        finally:
            await database.disconnect()

    return asyncio.run(main())


def _guard(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except ConfigError:
            raise  # main(): exit code 2, as for every command
        except (OSError, ValueError) as exc:
            print(f"minichat outbox: {exc}", file=sys.stderr)
            return ExitCode.FAILURE
        except Exception as exc:  # a missing table, a refused connection: say what, not a traceback
            print(f"minichat outbox: {type(exc).__name__}: {exc}", file=sys.stderr)
            if "outbox_" in str(exc) and ("no such table" in str(exc) or "does not exist" in str(exc)):
                print(
                    "minichat outbox: the database is not migrated; run `minichat migrate upgrade`",
                    file=sys.stderr,
                )
            return ExitCode.FAILURE

    return wrapper


def _json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _iso(value: dt.datetime | None) -> str:
    return "-" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _letter_json(letter: DeadLetter) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(letter)
    try:
        data["payload"] = letter.payload.decode("utf-8")
    except UnicodeDecodeError:
        data["payload"] = None
        data["payload_base64"] = base64.b64encode(letter.payload).decode("ascii")
    return data


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _short(text: str | None, limit: int = 60) -> str:
    if not text:
        return "-"
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# --- commands ---------------------------------------------------------------------------------------------


@_guard
def _status(args: argparse.Namespace) -> int:
    statuses: list[QueueStatus] = _run(
        args, lambda db, dialect: queue_status(db, args.queue, dialect=dialect)
    )
    if args.json:
        _json(msgspec.to_builtins(statuses))
        return ExitCode.OK
    if not statuses:
        print("no outbox queues registered yet (the server registers them when it starts)")
        return ExitCode.OK
    rows = [
        [
            s.queue,
            str(s.partition),
            str(s.backlog),
            f"{s.processed_seq}/{s.last_seq}",
            str(s.attempts),
            f"{s.locked_by} until {_iso(s.locked_until)}" if s.locked_by else "-",
            "-" if s.oldest_pending_age_seconds is None else f"{s.oldest_pending_age_seconds:.1f}s",
            _iso(s.retry_at) if s.retry_at else "-",
            str(s.dead_letters),
            _short(s.last_error),
        ]
        for s in statuses
    ]
    _table(
        [
            "QUEUE",
            "PART",
            "BACKLOG",
            "ACKED/LAST",
            "ATTEMPTS",
            "LEASE",
            "OLDEST",
            "RETRY AT",
            "DEAD",
            "LAST ERROR",
        ],
        rows,
    )
    return ExitCode.OK


@_guard
def _list(args: argparse.Namespace) -> int:
    status = None if args.status == "all" else args.status
    letters: list[DeadLetter] = _run(
        args, lambda db, _: dl.list_dead_letters(db, args.queue, status, args.limit)
    )
    if args.json:
        _json([_letter_json(letter) for letter in letters])
        return ExitCode.OK
    if not letters:
        print(f"no {args.status if status else ''} dead letters".replace("  ", " "))
        return ExitCode.OK
    _table(
        ["ID", "QUEUE", "PART", "SEQ", "STATUS", "ATTEMPTS", "FAILED AT", "REASON"],
        [
            [
                str(x.id),
                x.queue,
                str(x.partition),
                str(x.seq),
                x.status,
                str(x.attempts),
                _iso(x.failed_at),
                _short(x.last_error),
            ]
            for x in letters
        ],
    )
    return ExitCode.OK


@_guard
def _show(args: argparse.Namespace) -> int:
    letter: DeadLetter | None = _run(args, lambda db, _: dl.get_dead_letter(db, args.id))
    if letter is None:
        print(f"minichat outbox: no dead letter with id {args.id}", file=sys.stderr)
        return ExitCode.FAILURE
    if args.json:
        _json(_letter_json(letter))
        return ExitCode.OK
    for label, value in (
        ("id", letter.id),
        ("queue", letter.queue),
        ("partition", letter.partition),
        ("seq", letter.seq),
        ("status", letter.status),
        ("attempts", letter.attempts),
        ("enqueued at", _iso(letter.created_at)),
        ("failed at", _iso(letter.failed_at)),
        ("completed at", _iso(letter.completed_at)),
        ("reason", letter.last_error),
        ("payload type", letter.payload_type),
    ):
        print(f"{label + ':':14} {value}")
    print("payload:")
    print(letter.payload_text())
    return ExitCode.OK


def _scope(args: argparse.Namespace) -> DeadLetterFilter | None:
    if args.ids and args.all:
        print("minichat outbox: give dead-letter ids or --all, not both", file=sys.stderr)
        return None
    if args.ids:
        if args.queue:
            print("minichat outbox: --queue only applies with --all", file=sys.stderr)
            return None
        return DeadLetterFilter(ids=tuple(args.ids))
    if args.all:
        return DeadLetterFilter(queue=args.queue)
    print("minichat outbox: give dead-letter ids, or --all to select every pending one", file=sys.stderr)
    return None


@_guard
def _replay(args: argparse.Namespace) -> int:
    scope = _scope(args)
    if scope is None:
        return ExitCode.USAGE
    with progress.bar(args, "replay", unit="letter") as bar:
        letters: list[DeadLetter] = _run(
            args,
            lambda db, dialect: dl.replay_dead_letters(
                db, dialect, scope, batch_size=args.batch_size, progress=progress.reporter(bar)
            ),
        )
    if args.json:
        _json({"replayed": [letter.id for letter in letters]})
    else:
        print(
            f"replayed {len(letters)} dead letter(s)"
            + (": " + ", ".join(str(x.id) for x in letters) if letters else "")
        )
    return _missing(args, [letter.id for letter in letters])


@_guard
def _discard(args: argparse.Namespace) -> int:
    scope = _scope(args)
    if scope is None:
        return ExitCode.USAGE
    with progress.bar(args, "discard", unit="letter") as bar:
        ids: list[int] = _run(
            args,
            lambda db, _: dl.discard_dead_letters(
                db,
                scope,
                batch_size=args.batch_size,
                progress=progress.reporter(bar),
                everything=args.all,  # `--all` is the explicit "every pending one"
            ),
        )
    if args.json:
        _json({"discarded": ids})
    else:
        print(f"discarded {len(ids)} dead letter(s)" + (": " + ", ".join(map(str, ids)) if ids else ""))
    return _missing(args, ids)


def _missing(args: argparse.Namespace, done: list[int]) -> int:
    """Exit 1 when an explicitly named id was not pending (unknown, already replayed or discarded)."""
    missing = sorted(set(args.ids) - set(done))
    if missing:
        print(
            f"minichat outbox: not pending (unknown or already handled): {', '.join(map(str, missing))}",
            file=sys.stderr,
        )
        return ExitCode.FAILURE
    return ExitCode.OK
