"""Start-up time and memory of a real ``xks-proxy serve`` over a large key store.

Fills a store (SQLite by default; PostgreSQL with ``--database-url``, or ``--postgresql`` for a
throw-away server this tool starts itself, the tests' ``tests/postgres.py``) with ``--keys`` keys
in one transaction, then starts ``xks-proxy serve`` and reports: seconds from exec to "ready" (the
log line naming the key store), its RSS then, and its RSS after encrypting once under
``--touch`` distinct keys (each first use unseals one version into the bounded cache). Issue 12's
target: 100,000 keys start in under 5 s and serve within 200 MiB RSS. A measurement, not a test.

    .venv/bin/python -m tools.keystore_scale [--keys 100000] [--touch 2000]
        [--database-url URL | --postgresql]
"""

from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tests.postgres import PostgresServer
from tests.proxy_process import XKS_PROXY, free_port, post
from tests.xks_client import encrypt_body
from xks_proxy.backends.base import DECRYPT, ENCRYPT
from xks_proxy.config import SoftwareBackendConfig, load_config
from xks_proxy.keystore.records import KeyRecord
from xks_proxy.keystore.sealing import KEY_BYTES
from xks_proxy.keystore.store import open_key_database
from xks_proxy.scaffold import scaffold

READY = "key store dev at"


def fill(config: SoftwareBackendConfig, count: int) -> None:
    database = open_key_database(config)
    try:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        usage = frozenset({ENCRYPT, DECRYPT})
        records = (
            KeyRecord(
                key_id=f"scale-{index:06d}",
                usage=usage,
                enabled=True,
                internal=False,
                created_at=now,
                versions={1: database.sealer.seal(f"scale-{index:06d}", 1, os.urandom(KEY_BYTES))},
            )
            for index in range(count)
        )
        database.copy_records(records)
    finally:
        database.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far: on a shared machine, what start-up cost in
    itself, whatever else ran (wall time also counts the waiting)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@dataclass(frozen=True, slots=True)
class ScaleFigures:
    store: str
    keys: int
    ready_seconds: float
    ready_cpu_seconds: float
    ready_rss_mib: float
    touched: int
    touched_rss_mib: float


def serve_until_ready(
    config_path: Path, port: int, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], float]:
    """``xks-proxy serve`` started and read until it logs READY: the process (the caller
    terminates it) and the seconds from exec to ready."""
    started = time.perf_counter()
    command = [XKS_PROXY, "serve", "--config", str(config_path), "--port", str(port)]
    proxy = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    assert proxy.stderr is not None
    for line in proxy.stderr:
        if READY in line:
            return proxy, time.perf_counter() - started
    proxy.communicate(timeout=60)
    raise RuntimeError("the proxy exited before it was ready")


def measure(directory: Path, keys: int, touch: int, database_url: str | None) -> ScaleFigures:
    made = scaffold(directory, port=0, metrics_port=0, database_url=database_url)
    config = load_config(made.config_path)
    backend = config.backends["local"]
    assert isinstance(backend, SoftwareBackendConfig)
    started = time.perf_counter()
    fill(backend, keys)
    print(f"filled {keys} keys in {time.perf_counter() - started:.1f} s ({made.key_location})")

    port = free_port()
    proxy, ready = serve_until_ready(made.config_path, port)
    try:
        assert proxy.stderr is not None
        ready_rss = rss_mib(proxy.pid)
        ready_cpu = cpu_seconds(proxy.pid)
        # Keep draining the log, so the proxy never blocks on a full pipe.
        threading.Thread(target=proxy.stderr.read, daemon=True).start()
        print(f"start-up: {ready:.2f} s to ready ({ready_cpu:.2f} s CPU); RSS {ready_rss:.0f} MiB")
        credential = config.key_stores[0].credentials[0]
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        path = "/keystores/dev/kms/xks/v1/keys/{}/encrypt"
        for index in range(min(touch, keys)):
            status, _ = post(
                connection, path.format(f"scale-{index:06d}"), encrypt_body(b"x"), credential
            )
            assert status == 200
        connection.close()
        touched = min(touch, keys)
        touched_rss = rss_mib(proxy.pid)
        print(f"after encrypting under {touched} distinct keys: RSS {touched_rss:.0f} MiB")
    finally:
        proxy.terminate()
        proxy.wait(timeout=60)
    store = "PostgreSQL" if database_url else "SQLite"
    return ScaleFigures(store, keys, ready, ready_cpu, ready_rss, touched, touched_rss)


def report(figures: ScaleFigures) -> str:
    machine = f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end"
    if figures.store == "PostgreSQL":
        machine += "; the PostgreSQL server on the same cores"
    return "\n".join(
        [
            f"## Key store scale ({figures.store}, {figures.keys:,} keys)",
            "",
            "`xks-proxy serve` over a filled store (`python -m tools.keystore_scale`; "
            f"{machine}). Issue 12's target: "
            "under 5 s and within 200 MiB.",
            "",
            "| | |",
            "|---|---|",
            f"| exec to ready | {figures.ready_seconds:.2f} s |",
            f"| CPU time of the proxy to ready (user + system) "
            f"| {figures.ready_cpu_seconds:.2f} s |",
            f"| RSS when ready | {figures.ready_rss_mib:.0f} MiB |",
            f"| RSS after Encrypt under {figures.touched:,} distinct keys "
            f"| {figures.touched_rss_mib:.0f} MiB |",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--touch", type=int, default=2_000)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--database-url", help="postgresql://... (default: an SQLite file)")
    where.add_argument(
        "--postgresql", action="store_true", help="start a throw-away PostgreSQL server for it"
    )
    parser.add_argument("--append", metavar="FILE", help="append the figures to FILE (Markdown)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        if args.postgresql:
            server = PostgresServer()
            try:
                server.start()
                url = server.create_database("xks_scale")
                figures = measure(Path(scratch), args.keys, args.touch, url)
            finally:
                server.destroy()
        else:
            figures = measure(Path(scratch), args.keys, args.touch, args.database_url)
    section = report(figures)
    print(section)
    if args.append:
        with Path(args.append).open("a", encoding="utf-8") as out:
            out.write("\n" + section)


if __name__ == "__main__":
    main()
