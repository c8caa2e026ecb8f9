"""The exit codes of every `minichat` command, in one place (the table in docs/cli.md and `minichat --help`).

argparse exits with 2 on a usage error by itself, which is why a usage or configuration error is 2 here.
"""

from __future__ import annotations

import enum
import textwrap
from typing import Final


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2


# One line each: `minichat --help` prints them as its epilog; docs/cli.md has the same table (a test
# compares them).
MEANINGS: Final[dict[ExitCode, str]] = {
    ExitCode.OK: "success",
    ExitCode.FAILURE: (
        "the command ran but failed: the database is unreachable or not migrated, a migration failed, "
        "a named dead letter does not exist or was not pending, a file could not be written"
    ),
    ExitCode.USAGE: (
        "usage or configuration error: unknown command or option, a bad option value, an invalid config "
        "file or value (the message names the key path), a plugin set-up error, a refused name"
    ),
}


def epilog(width: int = 78) -> str:
    """The exit codes as the `minichat --help` epilog (wrapped, for RawDescriptionHelpFormatter)."""
    lines = ["exit codes:"]
    for code in ExitCode:
        lines += textwrap.wrap(
            MEANINGS[code], width, initial_indent=f"  {int(code)}  ", subsequent_indent="     "
        )
    return "\n".join(lines)
