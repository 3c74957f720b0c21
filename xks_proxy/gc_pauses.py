"""Garbage-collector pauses, timed with ``gc.callbacks``: the third latency signal beside the
request duration and the event-loop lag.

A collection runs on whichever thread allocates, which in a worker is the event loop's: for as
long as it scans, no request moves, and each one waiting carries the pause. The loop-lag
histogram shows that a stall happened; this one says whether the collector made it, and which
generation (after ``gc.freeze()`` at start-up a full, generation-2 collection scans only what
the worker allocated since, so its pauses say how much long-lived garbage requests leave).
Two ``perf_counter`` calls per collection: nothing next to the collection itself.

The callback only notes each pause; ``flush``, called from the event loop (the loop-lag
monitor's tick, a few times a second), hands them to the histogram. A collection starts at
whatever allocation crosses the threshold, also one inside prometheus-client's own locked code:
with workers, its multiprocess values share one non-reentrant lock, and observing a metric from
the callback there deadlocked the worker (a request that never got its answer, a worker that
never exited).
"""

from __future__ import annotations

import gc
import time
from collections import deque
from collections.abc import Callable
from typing import Any

# Pauses noted between two flushes, at most: a loop too stalled to flush loses the oldest.
MAX_PENDING = 1024


class GcPauseMonitor:
    def __init__(self, observe: Callable[[int, float], None]) -> None:
        """``observe(generation, seconds)`` is called by ``flush`` for each collection since."""
        self._observe = observe
        self._started = 0.0
        # A deque: collections run on any thread, and append/popleft are atomic.
        self._pending: deque[tuple[int, float]] = deque(maxlen=MAX_PENDING)

    def start(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._pending.append((info["generation"], time.perf_counter() - self._started))

    def flush(self) -> None:
        """Observe the pauses noted since the last flush (never from the callback: above)."""
        pending = self._pending
        while pending:
            self._observe(*pending.popleft())
