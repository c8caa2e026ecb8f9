"""`minichat config check`: validate the config and print the effective values with secrets masked."""

from __future__ import annotations

import argparse
import json
from typing import Any

import yaml

from minichat_host.cli.exit_codes import ExitCode
from minichat_host.config import load_config, masked


def _check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    effective = masked(config)
    if args.json:
        print(json.dumps(effective, indent=2, sort_keys=True))
    else:
        print("# config OK; effective values (secrets masked)")
        print(yaml.safe_dump(effective, sort_keys=True), end="")
    return ExitCode.OK


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser("config", help="configuration tools")
    csub = parser.add_subparsers(dest="config_command", required=True)
    check = csub.add_parser("check", help="validate and print the effective config")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(func=_check)
