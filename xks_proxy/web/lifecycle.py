"""The life of a proxy process, from start to exit, and the signals that steer it.

Start: the pid file's lock first (``web/pidfile.py``), then a probe of every port to be bound,
so a second start or a busy port stops with one line (exit 2) before backends open, workers
start or any listener of the running proxy is touched.

Signals, in the single process and in each worker (the supervisor forwards them):

- SIGTERM: /ping answers 503 at once, responses carry ``Connection: close`` (clients move to
  another proxy), and serving goes on for ``server.shutdown_delay_seconds``; then the listener
  closes and started requests drain (``drain_seconds``). SIGINT (Ctrl-C in a terminal) skips the
  delay, also when it arrives during it.
- SIGHUP: reload the configuration.
- SIGUSR1: reopen the audit log at once (after logrotate moved it away).

Workers never outlive their supervisor: each asks the kernel for SIGINT when its parent dies
(``PR_SET_PDEATHSIG``), so it stops accepting at once and drains, and exits at start-up if the
supervisor is already gone.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from xks_proxy.audit import STDOUT
from xks_proxy.config import Config
from xks_proxy.web.pidfile import running_pid

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
SUPERVISOR_PID_ENV = "XKS_PROXY_SUPERVISOR_PID"
# How long ``reopen-logs`` waits for the new audit file to appear before it returns anyway.
REOPEN_WAIT_SECONDS = 5.0


class StartRefusedError(Exception):
    """The proxy cannot start and has touched nothing: already running, or a port is busy.
    ``serve`` prints it as one line and exits 2."""


def probe_ports(host_ports: Iterable[tuple[str, int]]) -> None:
    """Bind each (host, port) once, as a listener would, and let go; StartRefusedError if one
    is in use. A plain bind (no SO_REUSEPORT) also fails while another proxy's workers share
    the port, which a worker's own SO_REUSEPORT bind would silently join."""
    for host, port in host_ports:
        if port == 0:
            continue
        for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(address)
                except OSError as error:
                    if error.errno == errno.EADDRINUSE:
                        raise StartRefusedError(f"port {port} is in use") from None
                    raise


def ignore_reopen_until_ready() -> None:
    """SIGUSR1's default action kills: a rotation while the process starts must not."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def die_with_supervisor() -> None:
    """In a worker: get SIGINT when the supervisor dies; exit now if it already has."""
    expected = os.environ.get(SUPERVISOR_PID_ENV)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if expected is not None and os.getppid() != int(expected):
        log.error("the supervisor (pid %s) is gone; exiting", expected)
        raise SystemExit(1)


class SignalPlan:
    """What a serving process does on each signal, until ``wait_for_stop`` returns."""

    def __init__(
        self,
        on_reload: Callable[[], None],
        on_reopen_logs: Callable[[], None],
        shutdown_delay: Callable[[], float],
    ) -> None:
        self._on_reload = on_reload
        self._on_reopen_logs = on_reopen_logs
        self._shutdown_delay = shutdown_delay
        self._stop = asyncio.Event()
        self._skip_delay = asyncio.Event()
        self.stop_signal: int | None = None

    def install(self) -> None:
        """Reopening logs works from the start; SIGUSR1's default action would kill us."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, self._on_reopen_logs)
        loop.add_signal_handler(signal.SIGTERM, self._stop_requested, signal.SIGTERM)
        loop.add_signal_handler(signal.SIGINT, self._stop_requested, signal.SIGINT)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload)

    def _stop_requested(self, signum: int) -> None:
        if signum == signal.SIGINT:
            self._skip_delay.set()
        if self.stop_signal is None:
            self.stop_signal = signum
            self._stop.set()
        else:
            log.info("already stopping")

    async def wait_for_stop(self, stopping: Callable[[], None]) -> None:
        """Return when the listener should close: after SIGINT at once, after SIGTERM once the
        shutdown delay has passed. ``stopping`` runs as soon as the signal arrives."""
        await self._stop.wait()
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        stopping()
        delay = 0.0 if self._skip_delay.is_set() else self._shutdown_delay()
        name = signal.Signals(self.stop_signal or signal.SIGTERM).name
        log.info("%s: /ping answers 503; serving %.1f s more before closing the listener",
                 name, delay)  # fmt: skip
        if delay > 0:
            try:
                await asyncio.wait_for(self._skip_delay.wait(), delay)
                log.info("SIGINT: shutdown delay cut short")
            except TimeoutError:
                pass

    def uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
            loop.remove_signal_handler(signum)


def reopen_logs(config: Config) -> int:
    """``xks-proxy reopen-logs``: SIGUSR1 to the running proxy, then wait until the audit file
    exists again, so logrotate compresses the old file only once the proxy has let go of it."""
    pid = running_pid(config.pid_path)
    os.kill(pid, signal.SIGUSR1)
    if config.audit.enabled and config.audit.path != STDOUT:
        audit = Path(config.audit.path)
        deadline = time.monotonic() + REOPEN_WAIT_SECONDS
        while not audit.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    return pid
