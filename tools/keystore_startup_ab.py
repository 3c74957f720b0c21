"""Start-up of ``xks-proxy serve`` over one large key store: another tree's code against this one.

``tools.keystore_scale`` measures one start; on a shared machine one start says little about a
change. This fills one store (SQLite, or with ``--postgresql`` a throw-away server) once, then
starts the proxy ``--rounds`` times from each tree, alternating which goes first, and prints
each start and the medians: seconds from exec to ready, CPU time of the proxy to ready, RSS.
``--baseline DIR`` is a plain copy of the other tree (``git archive REV | tar -x -C DIR``); its
modules come first on ``PYTHONPATH``, the same interpreter and packages run both. A measurement,
not a test.

    .venv/bin/python -m tools.keystore_startup_ab --baseline DIR [--postgresql] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from tests.postgres import PostgresServer
from tests.proxy_process import free_port
from tools.keystore_scale import cpu_seconds, fill, rss_mib, serve_until_ready
from xks_proxy.config import SoftwareBackendConfig, load_config
from xks_proxy.scaffold import scaffold

Start = tuple[float, float, float]  # seconds to ready, CPU seconds, RSS MiB


def start(config_path: Path, env: dict[str, str]) -> Start:
    proxy, ready = serve_until_ready(config_path, free_port(), env)
    try:
        return ready, cpu_seconds(proxy.pid), rss_mib(proxy.pid)
    finally:
        proxy.terminate()
        proxy.communicate(timeout=60)


def compare(directory: Path, keys: int, rounds: int, baseline: Path, url: str | None) -> None:
    made = scaffold(directory, port=0, metrics_port=0, database_url=url)
    backend = load_config(made.config_path).backends["local"]
    assert isinstance(backend, SoftwareBackendConfig)
    fill(backend, keys)
    trees = {"baseline": dict(os.environ, PYTHONPATH=str(baseline)), "this tree": dict(os.environ)}
    starts: dict[str, list[Start]] = {name: [] for name in trees}
    for index in range(rounds):
        order = list(trees) if index % 2 == 0 else list(reversed(trees))
        for name in order:
            figures = start(made.config_path, trees[name])
            starts[name].append(figures)
            load = os.getloadavg()[0]
            print(f"{name}: {figures[0]:.2f} s, {figures[1]:.2f} s CPU, {figures[2]:.0f} MiB"
                  f" (load {load:.1f})", flush=True)  # fmt: skip
    for name, figures_of in starts.items():
        median = [
            statistics.median(figures[column] for figures in figures_of) for column in range(3)
        ]
        print(f"{name}, median of {rounds}: {median[0]:.2f} s to ready, {median[1]:.2f} s CPU, "
              f"{median[2]:.0f} MiB")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgresql", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        if not args.postgresql:
            compare(Path(scratch), args.keys, args.rounds, args.baseline.resolve(), None)
            return
        server = PostgresServer()
        try:
            server.start()
            url = server.create_database("xks_scale")
            compare(Path(scratch), args.keys, args.rounds, args.baseline.resolve(), url)
        finally:
            server.destroy()


if __name__ == "__main__":
    main()
