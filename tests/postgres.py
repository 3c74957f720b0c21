"""A real PostgreSQL server that the tests start themselves, from Debian's packages.

``initdb`` refuses to run as root, and CI runs as root: then every server program runs as the
``postgres`` user (``runuser -u postgres``) in a fresh directory under /tmp that this user owns
(pytest's own temporary directories are 0700 root). As any other user the programs run as that
user. The server listens on a socket directory of its own and on a loopback port reserved for it
while it exists (tests/ports.py: a server stopped and started again keeps its port), with trust
authentication for local connections only, and is stopped (and its directory removed) at the end.

Debian's binaries live in /usr/lib/postgresql/<major>/bin; that is what a fresh Debian 12 has
after ``scripts/install-system-deps.sh``, so it is preferred over anything else on PATH.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.ports import PortReservation

DATABASE_USER = "postgres"


def postgres_bin_dir() -> Path:
    """The newest Debian PostgreSQL's program directory, else the one ``initdb`` on PATH is in."""
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parent.parent.name),
    )
    if debian:
        return Path(debian[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL is not installed: run scripts/install-system-deps.sh")
    return Path(initdb).parent


class PostgresServer:
    """One throw-away cluster; ``start``/``stop`` may be called again to simulate an outage."""

    def __init__(self) -> None:
        self._bin = postgres_bin_dir()
        self._as_root = os.geteuid() == 0
        self.directory = Path(tempfile.mkdtemp(prefix="xks-postgres-"))
        self.data_dir = self.directory / "data"
        self.socket_dir = self.directory / "socket"
        self.log_path = self.directory / "server.log"
        self._reservation = PortReservation()
        self.port = self._reservation.port
        self.running = False
        self.socket_dir.mkdir()
        if self._as_root:
            shutil.chown(self.directory, DATABASE_USER, DATABASE_USER)
            shutil.chown(self.socket_dir, DATABASE_USER, DATABASE_USER)
        self._run(
            "initdb",
            "--pgdata", str(self.data_dir),
            "--username", DATABASE_USER,
            "--auth", "trust",
            "--encoding", "UTF8",
            "--no-sync",
        )  # fmt: skip

    def _run(self, program: str, *args: str) -> None:
        command = [str(self._bin / program), *args]
        if self._as_root:
            command = ["runuser", "-u", DATABASE_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"{program} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{DATABASE_USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        # fsync off: a test server needs no durability across an OS crash; the SIGKILL tests
        # kill clients, never the server.
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.socket_dir} -c fsync=off -c max_connections=100"
        )
        self._run(
            "pg_ctl", "start", "--wait", "--timeout", "60",
            "--pgdata", str(self.data_dir), "--log", str(self.log_path), "-o", options,
        )  # fmt: skip
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """``fast`` disconnects clients and shuts down cleanly; ``immediate`` is a crash."""
        self._run("pg_ctl", "stop", "--wait", "--pgdata", str(self.data_dir), "--mode", mode)
        self.running = False

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def psql(self, sql: str, database: str = "postgres") -> str:
        command = [
            str(self._bin / "psql"),
            "--no-psqlrc", "--quiet", "--tuples-only", "--no-align",
            "--host", str(self.socket_dir), "--port", str(self.port),
            "--username", DATABASE_USER, "--dbname", database, "--command", sql,
        ]  # fmt: skip
        if self._as_root:
            command = ["runuser", "-u", DATABASE_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
        return result.stdout.strip()

    def destroy(self) -> None:
        if self.running:
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)
        self._reservation.close()
