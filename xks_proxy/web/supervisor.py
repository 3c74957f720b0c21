"""``serve --workers N``: N worker processes share the XKS port through SO_REUSEPORT, each
with its own event loop; this supervisor restarts a worker that dies, forwards SIGHUP (reload),
SIGUSR1 (reopen logs), SIGTERM (graceful stop after the shutdown delay) and SIGINT (graceful
stop now) to them, and serves the metrics of all of them on the metrics port through
prometheus-client's multiprocess mode.

Start-up (see ``web/lifecycle.py``): the pid file's lock, then a probe of every port, then the
metrics listener, then the workers. A worker that cannot start at all (exit 2: bad
configuration, busy port) on its first run stops the supervisor with exit 2 instead of being
restarted forever. Workers die with the supervisor (``PR_SET_PDEATHSIG``).
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
from xks_proxy.metrics import WORKER_SLOT_ENV
from xks_proxy.web.admin_listener import AdminListener, start_admin_listener
from xks_proxy.web.app import create_metrics_app
from xks_proxy.web.lifecycle import (
    SUPERVISOR_PID_ENV,
    StartRefusedError,
    ignore_reopen_until_ready,
    probe_ports,
)
from xks_proxy.web.pidfile import PidFile
from xks_proxy.web.server import ServeOptions, listener_addresses, start_runner

log = logging.getLogger(__name__)
# A worker that dies sooner than this after starting is restarted after a pause, not at once.
QUICK_DEATH_SECONDS = 5.0
RESTART_PAUSE_SECONDS = 1.0
# A worker's exit status for "cannot start at all" (process_commands.cmd_serve: bad
# configuration, busy port).
EXIT_CANNOT_START = 2


class Supervisor:
    def __init__(self, config: Config, options: ServeOptions, workers: int) -> None:
        self._config = config
        self._options = options
        self._workers = workers
        self._metrics_dir = tempfile.mkdtemp(prefix="xks-proxy-metrics-")
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = False
        self._cannot_start = asyncio.Event()

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
        environment[SUPERVISOR_PID_ENV] = str(os.getpid())
        environment[WORKER_SLOT_ENV] = str(slot)
        # A worker inherits an ignored SIGUSR1 and ignores it until its own handler is in
        # place, so a logrotate while it starts cannot kill it (SIGUSR1's default action).
        # The fork happens before the first await; a reopen asked for in that instant is
        # caught by the audit log's own rotation check.
        loop = asyncio.get_running_loop()
        loop.remove_signal_handler(signal.SIGUSR1)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        try:
            process = await asyncio.create_subprocess_exec(*self._command(), env=environment)
        finally:
            loop.add_signal_handler(signal.SIGUSR1, self._signal_all, signal.SIGUSR1)
        self._processes[slot] = process
        log.info("worker %d started (pid %d)", slot, process.pid)

    async def _keep_alive(self, slot: int) -> None:
        first = True
        while not self._stopping:
            started = time.monotonic()
            await self._spawn(slot)
            process = self._processes[slot]
            code = await process.wait()
            mark_process_dead(process.pid, self._metrics_dir)  # type: ignore[no-untyped-call]
            if self._stopping:
                return
            if first and code == EXIT_CANNOT_START:
                self._cannot_start.set()
                return
            first = False
            log.warning("worker %d (pid %d) exited with %s; restarting", slot, process.pid, code)
            if time.monotonic() - started < QUICK_DEATH_SECONDS:
                await asyncio.sleep(RESTART_PAUSE_SECONDS)

    def _signal_all(self, signum: int) -> None:
        for process in self._processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    async def run(self) -> None:
        ignore_reopen_until_ready()
        pid_file = PidFile(self._config.pid_path)
        pid_file.acquire()
        try:
            probe_ports(listener_addresses(self._config, self._options))
            await self._run()
        finally:
            pid_file.release()
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        stop_signal: int = signal.SIGTERM

        def stop_requested(signum: int) -> None:
            nonlocal stop_signal
            if stop.is_set():
                # SIGINT during the workers' shutdown delay cuts it short there too.
                self._signal_all(signum)
                return
            stop_signal = signum
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop_requested, signum)
        for signum in (signal.SIGHUP, signal.SIGUSR1):
            loop.add_signal_handler(signum, self._signal_all, signum)
        metrics_runner = None
        admin: AdminListener | None = None
        keepers: list[asyncio.Task[None]] = []
        try:
            # The workers' metrics and the supervisor's own: the admin API's counter.
            registry = CollectorRegistry()
            admin = await start_admin_listener(self._config, registry)
            if self._config.metrics.enabled:
                MultiProcessCollector(registry, path=self._metrics_dir)  # type: ignore[no-untyped-call]
                metrics_runner = await start_runner(
                    create_metrics_app(registry), self._config.metrics.host,
                    self._config.metrics.port, False,
                )  # fmt: skip
                log.info("metrics of all workers on %s/metrics", _address(metrics_runner))
            keepers = [asyncio.create_task(self._keep_alive(slot)) for slot in range(self._workers)]
            cannot_start = asyncio.create_task(self._cannot_start.wait())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait([cannot_start, stopped], return_when=asyncio.FIRST_COMPLETED)
            cannot_start.cancel()
            stopped.cancel()
            self._stopping = True
            if self._cannot_start.is_set():
                stop_signal = signal.SIGINT
            log.info("stopping %d worker(s)", self._workers)
            self._signal_all(stop_signal)
            server = self._config.server
            grace = server.shutdown_delay_seconds + server.drain_seconds + 10
            _, pending = await asyncio.wait(keepers, timeout=grace)
            if pending:
                self._signal_all(signal.SIGKILL)
                await asyncio.wait(pending, timeout=5)
            if self._cannot_start.is_set():
                raise StartRefusedError("a worker could not start (see the line above)")
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
                loop.remove_signal_handler(signum)
            if metrics_runner is not None:
                await metrics_runner.cleanup()
            if admin is not None:
                await admin.stop()


def _address(runner: web.AppRunner) -> str:
    host, port, *_ = runner.addresses[0]
    return f"http://{host}:{port}"
