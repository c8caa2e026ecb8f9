"""A throw-away PostgreSQL server for the test run.

`MINICHAT_TEST_PG_URL` (e.g. `postgresql+asyncpg://postgres@127.0.0.1:5432/postgres`) selects an existing
server whose user may create databases. Otherwise the PostgreSQL server binaries found under
/usr/lib/postgresql/*/bin (installed with apt-get only when absent) run a fresh cluster in a temporary
directory on a free loopback port, with trust authentication and durability switched off. As root the
server runs as the `postgres` OS user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

import asyncpg
from sqlalchemy.engine import make_url

ENV_TEST_PG_URL: Final = "MINICHAT_TEST_PG_URL"
SUPERUSER: Final = "postgres"
MAX_CONNECTIONS: Final = 200
START_TIMEOUT_SECONDS: Final = 60
STOP_TIMEOUT_SECONDS: Final = 15

# Settings for a disposable cluster: no durability work, small memory, room for many pooled connections.
SERVER_SETTINGS: Final = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": str(MAX_CONNECTIONS),
    "shared_buffers": "'32MB'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "'1GB'",
    "checkpoint_timeout": "'30min'",
    "autovacuum": "off",
    "jit": "off",
    "log_min_messages": "warning",
    "logging_collector": "off",
    "timezone": "'UTC'",
}


class PostgresError(RuntimeError):
    """The test PostgreSQL server could not be provided; the message says why and where the log is."""


def find_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin that has initdb, pg_ctl and postgres."""
    candidates: list[tuple[int, Path]] = []
    for initdb in Path("/usr/lib/postgresql").glob("*/bin/initdb"):
        bin_dir = initdb.parent
        if (bin_dir / "pg_ctl").exists() and (bin_dir / "postgres").exists():
            version = bin_dir.parent.name
            candidates.append((int(version) if version.isdigit() else 0, bin_dir))
    if candidates:
        return max(candidates)[1]
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path and shutil.which("pg_ctl") else None


def ensure_bin_dir() -> Path:
    """The server binaries, installing the Debian `postgresql` package only when they are missing."""
    found = find_bin_dir()
    if found is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PostgresError(
            "PostgreSQL server binaries are missing and cannot be installed (needs root + apt-get)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
    ):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
        if result.returncode != 0:
            raise PostgresError(
                f"{shlex.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )
    found = find_bin_dir()
    if found is None:
        raise PostgresError("installed the postgresql package but found no initdb/pg_ctl")
    return found


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


# Runs beside the test process and stops the cluster if that process dies without its teardown (SIGKILL,
# a CI timeout): it polls the owner's pid and exits quietly once the normal teardown removed the directory.
_GUARDIAN_SOURCE: Final = """
import os, shutil, subprocess, sys, time
owner, base_dir, pg_ctl, run_as = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

while alive(owner) and os.path.isdir(base_dir):
    time.sleep(0.5)
if os.path.isdir(base_dir):
    command = [pg_ctl, "--pgdata", os.path.join(base_dir, "data"), "--mode", "immediate", "--wait", "stop"]
    if run_as:
        command = ["runuser", "-u", run_as, "--", *command]
    try:
        subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=30, check=False)
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)
"""


class TemporaryCluster:
    """initdb + pg_ctl start on a temp directory; `stop()` is idempotent and never waits unboundedly."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.run_as = SUPERUSER if os.geteuid() == 0 else None
        self.base_dir = Path(tempfile.mkdtemp(prefix="minichat-pg-"))
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "sock"
        self.log_file = self.base_dir / "server.log"
        self.port = 0
        self._started = False
        self._stopped = False
        self._guardian: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def start(self, attempts: int = 3) -> None:
        self._guardian = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _GUARDIAN_SOURCE,
                str(os.getpid()),
                str(self.base_dir),
                str(self.bin_dir / "pg_ctl"),
                self.run_as or "",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: a signal to the test run's process group must not take the guardian along.
            start_new_session=True,
        )
        self.socket_dir.mkdir()
        if self.run_as is not None:
            shutil.chown(self.base_dir, user=self.run_as)
            shutil.chown(self.socket_dir, user=self.run_as)
        self._run(
            [
                str(self.bin_dir / "initdb"),
                "--pgdata",
                str(self.data_dir),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ],
            timeout=120,
        )
        settings = {**SERVER_SETTINGS, "unix_socket_directories": f"'{self.socket_dir}'"}
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# minichat test cluster\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        last_error: Exception | None = None
        for _ in range(attempts):
            # Another process may take the port between probing and binding: retry with a new one.
            self.port = free_loopback_port()
            try:
                self._run(
                    [
                        str(self.bin_dir / "pg_ctl"),
                        "--pgdata",
                        str(self.data_dir),
                        "--log",
                        str(self.log_file),
                        "--options",
                        f"-p {self.port}",
                        "--wait",
                        "--timeout",
                        str(START_TIMEOUT_SECONDS),
                        "start",
                    ],
                    timeout=START_TIMEOUT_SECONDS + 10,
                )
            except PostgresError as exc:
                last_error = exc
                self._kill_postmaster()
                continue
            self._started = True
            return
        raise PostgresError(f"PostgreSQL did not start: {last_error}\n{self._log_tail()}")

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            if self._started:
                with contextlib.suppress(PostgresError):
                    self._run(
                        [
                            str(self.bin_dir / "pg_ctl"),
                            "--pgdata",
                            str(self.data_dir),
                            "--mode",
                            "immediate",
                            "--wait",
                            "--timeout",
                            str(STOP_TIMEOUT_SECONDS),
                            "stop",
                        ],
                        timeout=STOP_TIMEOUT_SECONDS + 5,
                    )
            self._kill_postmaster()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            if self._guardian is not None:
                # The directory is gone, so the guardian exits by itself within one poll; reap it.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._guardian.wait(timeout=5)

    def _postmaster_pid(self) -> int | None:
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text(encoding="utf-8").splitlines()[0]
            return int(first_line.strip())
        except (OSError, ValueError, IndexError):
            return None

    def _kill_postmaster(self) -> None:
        """SIGKILL the postmaster this cluster started, if it is still there (pg_ctl failed or timed out)."""
        pid = self._postmaster_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.05)
        # Its backends exit once the postmaster is gone; a stale pid file would confuse a retry.
        with contextlib.suppress(OSError):
            (self.data_dir / "postmaster.pid").unlink()

    def _run(self, command: Sequence[str], *, timeout: float) -> None:
        full = list(command)
        if self.run_as is not None:
            runuser = shutil.which("runuser")
            full = (
                [runuser, "-u", self.run_as, "--", *full]
                if runuser
                else ["su", self.run_as, "-s", "/bin/sh", "-c", shlex.join(full)]
            )
        try:
            result = subprocess.run(
                full,
                cwd=self.base_dir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise PostgresError(f"{shlex.join(full)} timed out after {timeout}s") from exc
        if result.returncode != 0:
            raise PostgresError(
                f"{shlex.join(full)} exited {result.returncode}:\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )

    def _log_tail(self) -> str:
        try:
            return "server log:\n" + self.log_file.read_text(encoding="utf-8", errors="replace")[-4000:]
        except OSError:
            return "(no server log)"


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yield the base URL of a PostgreSQL server: the one from the environment, or a temporary cluster."""
    existing = os.environ.get(ENV_TEST_PG_URL)
    if existing:
        yield existing
        return
    cluster = TemporaryCluster(ensure_bin_dir())
    # Also on interpreter exit, in case the session ends without running fixture teardown.
    atexit.register(cluster.stop)
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.stop()
        atexit.unregister(cluster.stop)


# --- databases on the server ------------------------------------------------------------------------------


def database_url(base_url: str, name: str) -> str:
    """`base_url` pointing at database `name` instead."""
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


def new_database_name(prefix: str = "test") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def execute_admin(base_url: str, *statements: str) -> None:
    """Run statements (CREATE/DROP DATABASE cannot run in a transaction) on the server's admin database.

    Runs on a worker thread with its own event loop, so it works from sync and async code alike.
    """

    async def run() -> None:
        url = make_url(base_url).set(drivername="postgresql")
        connection = await asyncpg.connect(
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            database=url.database or "postgres",
            timeout=30,
        )
        try:
            for statement in statements:
                await connection.execute(statement, timeout=60)
        finally:
            await connection.close(timeout=5)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-admin") as pool:
        pool.submit(asyncio.run, run()).result()


def create_database(base_url: str, name: str, *, template: str | None = None) -> str:
    clause = f' TEMPLATE "{template}"' if template else ""
    execute_admin(base_url, f'CREATE DATABASE "{name}"{clause}')
    return database_url(base_url, name)


def drop_database(base_url: str, name: str) -> None:
    # FORCE ends sessions a test left open, so the drop never waits on them.
    execute_admin(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
