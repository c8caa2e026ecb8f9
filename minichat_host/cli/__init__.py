"""`minichat` command line: one module per command group, each exposing `register(subparsers)`.

A handler is `func(args) -> int` (exit code), stored with `parser.set_defaults(func=...)`. Every command
accepts `--config` and, where it prints data, `--json`. Exit codes: `exit_codes.ExitCode` (0 ok, 1 failure,
2 usage/config error); long operations show a progress bar on a terminal (`progress.py`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from minichat_host.cli.exit_codes import ExitCode, epilog
from minichat_host.config import ConfigError

# Modules under minichat_host.cli that add commands, in help order.
COMMAND_MODULES = ("serve", "migrate", "config_cmd", "plugins_cmd", "outbox_cmd", "plugin_new")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minichat",
        description="minichat chat service",
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", help="YAML config file (default: $MINICHAT_CONFIG, else embedded defaults)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"minichat_host.cli.{name}")
        module.register(sub)
    return parser


def _hoist_config(argv: list[str]) -> list[str]:
    """Accept `--config FILE` anywhere on the line (`minichat config check --config x.yaml`)."""
    rest: list[str] = []
    hoisted: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            hoisted = ["--config", argv[i + 1]]
            i += 2
            continue
        if arg.startswith("--config="):
            hoisted = [arg]
        else:
            rest.append(arg)
        i += 1
    return hoisted + rest


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_hoist_config(list(sys.argv[1:] if argv is None else argv)))
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"minichat: config error: {exc}", file=sys.stderr)
        return int(ExitCode.USAGE)
    return int(code)  # a plain int for callers that print or compare it


if __name__ == "__main__":
    raise SystemExit(main())
