"""`minichat plugin new NAME`: scaffold a working plugin distribution for one capability.

The result has a pyproject.toml with the `minichat` entry point, a package with the capability's hooks
(a real minimal behaviour), a msgspec settings struct, a README and tests that use
`minichat_host.testing` and pass right after generation. Exit codes: 0 created, 1 the files could not be
written, 2 a refused NAME / vendor / directory.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from minichat_host.cli.exit_codes import ExitCode
from minichat_host.scaffold import CAPABILITIES, Scaffolded, ScaffoldError, create_plugin

_CONFIG_KEY = {
    "audit": "plugins.audit_vendor",
    "model_policy": "plugins.model_policy_vendor",
    "storage": "providers.<id>.storage",
}


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser("plugin", help="plugin author tools (scaffold a new plugin)")
    commands = parser.add_subparsers(dest="plugin_command", required=True)
    new = commands.add_parser(
        "new",
        help="create a plugin distribution: pyproject with the entry point, hooks, settings, README, tests",
    )
    new.add_argument(
        "name",
        metavar="NAME",
        help="plugin name, e.g. acme-audit: distribution minichat-acme-audit, package minichat_acme_audit",
    )
    new.add_argument("--capability", choices=CAPABILITIES, default="audit", help="default: audit")
    new.add_argument("--vendor", help="the vendor name deployers put in their config (default: NAME)")
    new.add_argument(
        "--dir",
        dest="directory",
        metavar="PATH",
        help="directory to create (default: ./minichat-NAME); refused when it exists and is not empty",
    )
    new.add_argument("--json", action="store_true", help="print the result as JSON")
    new.set_defaults(func=_new)


def _new(args: argparse.Namespace) -> int:
    try:
        result = create_plugin(
            args.name, capability=args.capability, vendor=args.vendor, directory=args.directory
        )
    except ScaffoldError as exc:
        print(f"minichat plugin new: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except OSError as exc:
        print(f"minichat plugin new: cannot write the plugin: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    if args.json:
        print(json.dumps(_as_json(result), indent=2))
    else:
        _print_text(result)
    return ExitCode.OK


def _as_json(result: Scaffolded) -> dict[str, Any]:
    names = result.names
    return {
        "directory": str(result.directory),
        "files": [str(path) for path in result.files],
        "capability": names.capability,
        "vendor": names.vendor,
        "distribution": names.distribution,
        "package": names.package,
        "entry_point": names.entry_point,
        "settings_section": names.section,
        "class_name": names.class_name,
        "config_key": _CONFIG_KEY[names.capability],
    }


def _print_text(result: Scaffolded) -> None:
    names = result.names
    where = _shown(result.directory)
    print(f"created {where}: {names.capability} plugin {names.entry_point!r} for vendor {names.vendor!r}")
    for path in result.files:
        print(f"  {path}")
    print("next:")
    print(f"  pip install -e {shlex.quote(where)}    (into the environment that runs minichat)")
    print(f"  cd {shlex.quote(where)} && python -m pytest")
    print(
        f"  set {_CONFIG_KEY[names.capability]}: {names.vendor} in your config, then run `minichat plugins`"
    )


def _shown(directory: Path) -> str:
    """The directory relative to the working directory when it is below it (shorter to copy)."""
    try:
        return str(directory.relative_to(Path.cwd()))
    except ValueError:
        return str(directory)
