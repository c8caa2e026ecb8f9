"""docs/cli.md documents every `minichat` command and option, and every data command has `--json`."""

from __future__ import annotations

import argparse
import re

from doc_snippets import DOCS

from minichat_host.cli import build_parser

CLI_DOC = DOCS / "cli.md"
# Commands that print no data (a server's log is not a result), so they need no --json.
NO_DATA = {"minichat serve"}


def leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subcommands:
        return [parser]
    return [
        leaf for action in subcommands for child in action.choices.values() for leaf in leaf_parsers(child)
    ]


def section(text: str, prog: str) -> str | None:
    match = re.search(rf"^### {re.escape(prog)}\s*$(.*?)(?=^#{{2,3}} |\Z)", text, re.MULTILINE | re.DOTALL)
    return match.group(1) if match else None


def names_of(action: argparse.Action) -> list[str]:
    if action.option_strings:
        return [max(action.option_strings, key=len)]  # the long form
    return [str(action.metavar or action.dest)]


def test_every_command_and_option_is_documented() -> None:
    text = CLI_DOC.read_text(encoding="utf-8")
    problems: list[str] = []
    for parser in leaf_parsers(build_parser()):
        body = section(text, parser.prog)
        if body is None:
            problems.append(f"no `### {parser.prog}` section")
            continue
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for name in names_of(action):
                if f"`{name}" not in body:
                    problems.append(f"{parser.prog}: option `{name}` is not described")
    assert not problems, "docs/cli.md is out of date:\n  " + "\n  ".join(problems)


def test_every_documented_command_exists() -> None:
    progs = {parser.prog for parser in leaf_parsers(build_parser())}
    documented = set(
        re.findall(r"^### (minichat [\w -]+?)\s*$", CLI_DOC.read_text(encoding="utf-8"), re.MULTILINE)
    )
    assert documented <= progs, (
        f"docs/cli.md documents commands that do not exist: {sorted(documented - progs)}"
    )


def test_every_command_that_prints_data_has_json() -> None:
    missing = [
        parser.prog
        for parser in leaf_parsers(build_parser())
        if parser.prog not in NO_DATA and "--json" not in parser._option_string_actions
    ]
    assert not missing, f"commands without --json: {missing}"


def test_exit_codes_are_documented() -> None:
    text = CLI_DOC.read_text(encoding="utf-8")
    for code in ("`0`", "`1`", "`2`"):
        assert f"| {code} |" in text
