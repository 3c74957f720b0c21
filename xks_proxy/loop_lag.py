"""Event-loop lag: how late the loop runs a callback that was due, the saturation signal of an
asyncio server.

A callback is scheduled every ``INTERVAL_SECONDS``; when it runs, the time since it was due is
observed in ``xks_event_loop_lag_seconds``. A loop busy with requests (or blocked by a slow
call) runs it late, and that delay is what every request waiting in the loop also suffers,
which the request-duration histogram alone cannot show for requests not yet read. One timer a
tenth of a second costs nothing measurable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

INTERVAL_SECONDS = 0.1


class LoopLagMonitor:
    def __init__(
        self, observe: Callable[[float], None], interval: float = INTERVAL_SECONDS
    ) -> None:
        self._observe = observe
        self._interval = interval
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._schedule(asyncio.get_running_loop())

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        due = loop.time() + self._interval
        self._timer = loop.call_at(due, self._tick, loop, due)

    def _tick(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        self._observe(max(0.0, loop.time() - due))
        self._schedule(loop)
