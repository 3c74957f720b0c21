"""Deep health checks run in the background, so GetHealthStatus answers from a fresh cache.

xks-spec §4.4: the check SHOULD really encrypt and decrypt (with a test key, never a customer
key), and a cached result MUST NOT be older than one minute. Each backend is checked every
``interval`` seconds; a result older than ``MAX_AGE_SECONDS`` (a stuck check) reads as
UNAVAILABLE, never as a stale ACTIVE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

from xks_proxy.backends.base import Backend, EkmHealth, HealthState
from xks_proxy.metrics import ProxyMetrics
from xks_proxy.safelog import log_unexpected

log = logging.getLogger(__name__)
MAX_AGE_SECONDS = 60.0
# A check slower than this still works but cannot fit KMS's 250 ms budget comfortably.
DEGRADED_AFTER_SECONDS = 0.1


class HealthMonitor:
    def __init__(
        self, backends: Mapping[str, Backend], interval: float, metrics: ProxyMetrics
    ) -> None:
        self._backends = backends
        self._interval = interval
        self._metrics = metrics
        self._results: dict[str, tuple[float, list[EkmHealth]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.check_all()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check_all()

    async def check_all(self) -> None:
        await asyncio.gather(*(self._check(name, b) for name, b in self._backends.items()))

    async def _check(self, name: str, backend: Backend) -> None:
        started = time.monotonic()
        try:
            results = await asyncio.wait_for(backend.check_health(), MAX_AGE_SECONDS / 2)
        except Exception as error:
            log_unexpected(log, logging.WARNING, f"health check of backend {name}", error)
            results = [EkmHealth(ekm_id=name, model="unknown", state=HealthState.UNAVAILABLE)]
        elapsed = time.monotonic() - started
        if elapsed > DEGRADED_AFTER_SECONDS:
            results = [
                EkmHealth(r.ekm_id, r.model, HealthState.DEGRADED)
                if r.state is HealthState.ACTIVE
                else r
                for r in results
            ]
        for result in results:
            self._metrics.set_ekm_state(name, result.ekm_id, result.state)
        self._results[name] = (time.monotonic(), results)
        self._metrics.health_check_time.labels(name).set(time.time())

    def status(self, backend: str) -> list[EkmHealth]:
        """The latest result for one backend; UNAVAILABLE when missing or too old."""
        checked_at, results = self._results.get(backend, (0.0, []))
        if not results or time.monotonic() - checked_at > MAX_AGE_SECONDS:
            return [EkmHealth(ekm_id=backend, model="unknown", state=HealthState.UNAVAILABLE)]
        return results
