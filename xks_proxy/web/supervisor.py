"""``serve --workers N``: N worker processes share the XKS port through SO_REUSEPORT, each
with its own event loop; this supervisor restarts a worker that dies, forwards SIGHUP (reload)
and SIGTERM (graceful stop) to them, and serves the metrics of all of them on the metrics port
through prometheus-client's multiprocess mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from xks_proxy.config import Config
from xks_proxy.web.app import create_metrics_app
from xks_proxy.web.server import ServeOptions, start_runner

log = logging.getLogger(__name__)
# A worker that dies sooner than this after starting is restarted after a pause, not at once.
QUICK_DEATH_SECONDS = 5.0
RESTART_PAUSE_SECONDS = 1.0


class Supervisor:
    def __init__(self, config: Config, options: ServeOptions, workers: int) -> None:
        self._config = config
        self._options = options
        self._workers = workers
        self._metrics_dir = tempfile.mkdtemp(prefix="xks-proxy-metrics-")
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = False

    def _command(self) -> list[str]:
        command = [sys.executable, "-m", "xks_proxy", "serve", "--worker"]
        command += ["--config", str(self._config.path)]
        if self._options.host is not None:
            command += ["--host", self._options.host]
        if self._options.port is not None:
            command += ["--port", str(self._options.port)]
        return command

    async def _spawn(self, slot: int) -> None:
        environment = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=self._metrics_dir)
        process = await asyncio.create_subprocess_exec(*self._command(), env=environment)
        self._processes[slot] = process
        log.info("worker %d started (pid %d)", slot, process.pid)

    async def _keep_alive(self, slot: int) -> None:
        while not self._stopping:
            started = time.monotonic()
            await self._spawn(slot)
            process = self._processes[slot]
            code = await process.wait()
            mark_process_dead(process.pid, self._metrics_dir)  # type: ignore[no-untyped-call]
            if self._stopping:
                return
            log.warning("worker %d (pid %d) exited with %s; restarting", slot, process.pid, code)
            if time.monotonic() - started < QUICK_DEATH_SECONDS:
                await asyncio.sleep(RESTART_PAUSE_SECONDS)

    def _signal_all(self, signum: int) -> None:
        for process in self._processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._signal_all, signal.SIGHUP)
        keepers = [asyncio.create_task(self._keep_alive(slot)) for slot in range(self._workers)]
        metrics_runner = None
        if self._config.metrics.enabled:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self._metrics_dir)  # type: ignore[no-untyped-call]
            metrics_runner = await start_runner(
                create_metrics_app(registry), self._config.metrics.host,
                self._config.metrics.port, False,
            )  # fmt: skip
            log.info("metrics of all workers on %s/metrics", _address(metrics_runner))
        pid_path = self._config.pid_path
        pid_path.write_text(f"{os.getpid()}\n")
        try:
            await stop.wait()
            self._stopping = True
            log.info("stopping %d worker(s)", self._workers)
            self._signal_all(signal.SIGTERM)
            grace = self._config.server.drain_seconds + 10
            _, pending = await asyncio.wait(keepers, timeout=grace)
            if pending:
                self._signal_all(signal.SIGKILL)
                await asyncio.wait(pending, timeout=5)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            if metrics_runner is not None:
                await metrics_runner.cleanup()
            with contextlib.suppress(FileNotFoundError):
                pid_path.unlink()
            shutil.rmtree(self._metrics_dir, ignore_errors=True)


def _address(runner: web.AppRunner) -> str:
    host, port, *_ = runner.addresses[0]
    return f"http://{host}:{port}"
