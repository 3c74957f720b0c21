"""Garbage-collector pauses, timed with ``gc.callbacks``: the third latency signal beside the
request duration and the event-loop lag.

A collection runs on whichever thread allocates, which in a worker is the event loop's: for as
long as it scans, no request moves, and each one waiting carries the pause. The loop-lag
histogram shows that a stall happened; this one says whether the collector made it, and which
generation (after ``gc.freeze()`` at start-up a full, generation-2 collection scans only what
the worker allocated since, so its pauses say how much long-lived garbage requests leave).
Two ``perf_counter`` calls per collection: nothing next to the collection itself.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any


class GcPauseMonitor:
    def __init__(self, observe: Callable[[int, float], None]) -> None:
        """``observe(generation, seconds)`` is called after every collection."""
        self._observe = observe
        self._started = 0.0

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
            self._observe(info["generation"], time.perf_counter() - self._started)
