"""Read the fenced code blocks of the Markdown docs: `sh` commands to run, `yaml` blocks to validate.

Conventions (documented in docs/cli.md, "Commands in these docs are tested"):
- in a ```sh block, every line that starts with `minichat ` or `.venv/bin/minichat ` (after optional
  `NAME=value` environment assignments) is a command the tests run; a trailing `\\` continues a line;
- `# no-run` on the line skips it; `# exit: N` expects exit code N instead of 0;
- every ```yaml block is a config file or fragment.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
MINICHAT_PROGRAMS = ("minichat", ".venv/bin/minichat")
_FENCE_OPEN = re.compile(r"^```(\w*)\s*$")
_FENCE_CLOSE = re.compile(r"^```\s*$")
_NO_RUN = re.compile(r"#\s*no-run\b")
_EXIT = re.compile(r"#\s*exit:\s*(\d+)\b")
_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)
_SHELL_OPERATORS = frozenset({"|", "||", "&&", ";", ">", ">>", "<", "&", "2>", "2>&1"})


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    language: str
    text: str


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    source: str  # the line as written
    argv: tuple[str, ...]  # arguments after the program name
    env: dict[str, str] = field(default_factory=dict)
    expected_exit: int = 0


def pages() -> list[Path]:
    """Every Markdown page of the site (the generator's notes under _tools are not pages)."""
    return sorted(p for p in DOCS.rglob("*.md") if "_tools" not in p.relative_to(DOCS).parts)


def blocks(page: Path) -> list[Block]:
    found: list[Block] = []
    language: str | None = None
    start = 0
    body: list[str] = []
    name = page.relative_to(DOCS).as_posix()
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        if language is None:
            opened = _FENCE_OPEN.match(line)
            if opened:
                language, start, body = opened.group(1), number, []
        elif _FENCE_CLOSE.match(line):
            found.append(Block(name, start, language, "\n".join(body)))
            language = None
        else:
            body.append(line)
    if language is not None:
        raise AssertionError(f"{name}:{start}: code fence is never closed")
    return found


def _logical_lines(block: Block) -> list[tuple[int, str]]:
    """Lines with `\\` continuations joined, numbered by the page line they start on."""
    result: list[tuple[int, str]] = []
    pending = ""
    pending_line = 0
    for offset, raw in enumerate(block.text.splitlines(), start=1):
        if not pending:
            pending_line = block.line + offset
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        result.append((pending_line, pending + raw))
        pending = ""
    if pending:
        result.append((pending_line, pending))
    return result


def commands(page: Path) -> list[Command]:
    """The minichat commands of a page's `sh` blocks, in page order (lines marked `# no-run` left out)."""
    found: list[Command] = []
    for block in blocks(page):
        if block.language != "sh":
            continue
        for line_number, line in _logical_lines(block):
            stripped = line.strip()
            if not stripped or stripped.startswith("#") or _NO_RUN.search(stripped):
                continue
            words = shlex.split(stripped, comments=True)
            env: dict[str, str] = {}
            while words and _ASSIGNMENT.match(words[0]):
                key, value = _ASSIGNMENT.match(words[0]).groups()  # type: ignore[union-attr]
                env[key] = value
                words = words[1:]
            if not words or words[0] not in MINICHAT_PROGRAMS:
                continue
            operators = _SHELL_OPERATORS.intersection(words)
            if operators:
                raise AssertionError(
                    f"{block.page}:{line_number}: `{stripped}` uses shell operators {sorted(operators)}; "
                    "documented minichat commands run without a shell: split it, or mark it `# no-run`"
                )
            expected = _EXIT.search(stripped)
            found.append(
                Command(
                    page=block.page,
                    line=line_number,
                    source=stripped,
                    argv=tuple(words[1:]),
                    env=env,
                    expected_exit=int(expected.group(1)) if expected else 0,
                )
            )
    return found
