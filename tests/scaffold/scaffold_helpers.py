"""Helpers for the scaffold tests: run a generated plugin's own tools in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(
    args: list[str], cwd: Path, *, pythonpath: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run a tool of this virtualenv in `cwd`; MYPYPATH points at the host's source (mypy cannot follow
    the editable install's import hook) and PYTHONPATH at `pythonpath` for a plugin that is not installed."""
    env = {**os.environ, "MYPYPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("MINICHAT_CONFIG", None)
    env.pop("MINICHAT_LOAD_PLUGINS", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def pytest_in(directory: Path, *, installed: bool) -> subprocess.CompletedProcess[str]:
    """The generated plugin's own test suite, as its author would run it."""
    return run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        directory,
        pythonpath=None if installed else directory,
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
