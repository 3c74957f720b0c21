"""A warning that repeats per request, logged at most once per interval.

A fault that hits every request (a full audit volume, a client sending garbage) must not write
a line, let alone a traceback, per request: that floods the log and can fill the same disk. The
first occurrence is logged at once; later ones within the interval are only counted, and the
next line that goes out says how many were left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

DEFAULT_INTERVAL_SECONDS = 60.0


class ThrottledWarning:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = DEFAULT_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: float | None = None
        self._suppressed = 0

    def warn(self, message: str, *args: object) -> None:
        """Log ``message % args`` unless a line went out less than an interval ago."""
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            self._suppressed += 1
            return
        if self._suppressed:
            message += " (%d more since the last report)"
            args = (*args, self._suppressed)
        self._last, self._suppressed = now, 0
        self._logger.warning(message, *args)
