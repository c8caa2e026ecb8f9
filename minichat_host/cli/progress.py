"""Progress bars of the long commands (`migrate upgrade|downgrade`, `outbox dead-letters replay|discard`).

A bar goes to stderr, and only when stderr is a terminal: never into a pipe or a log file, never with
`--json` (a script is reading), never with `--no-progress`. stdout is untouched either way.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from tqdm import tqdm


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (default: one on stderr when it is a terminal, never with --json)",
    )


def stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def wanted(args: argparse.Namespace) -> bool:
    """Whether this command line should show a progress bar."""
    if getattr(args, "json", False) or getattr(args, "no_progress", False):
        return False
    return stderr_is_terminal()


def bar(args: argparse.Namespace, desc: str, *, total: int | None = None, unit: str = "it") -> tqdm[Any]:
    """A bar on stderr; a disabled one (every call a no-op) when `wanted(args)` is false."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not wanted(args),
        dynamic_ncols=True,
        leave=True,
    )


def reporter(progress_bar: tqdm[Any]) -> Callable[[int, int], None]:
    """A `progress(done, total)` callback that moves `progress_bar`."""

    def report(done: int, total: int) -> None:
        if progress_bar.total != total:
            progress_bar.total = total
            progress_bar.refresh()
        if done > progress_bar.n:
            progress_bar.update(done - progress_bar.n)

    return report
