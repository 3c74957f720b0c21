"""The generator's event loop: epoll, with waits kept to the microsecond.

``epoll_wait(2)`` takes its timeout in whole milliseconds and Python's ``selectors`` rounds it
up, so on asyncio's default loop a request due 0.3 ms from now leaves up to 1 ms late, and that
delay is in the latency reported for it (measured from its due time): at 450 req/s the
generator's send lag was 0.65 ms at the median, 0.22 ms with this loop (its p99, about 2 ms,
is the generator's own work on answers and did not change; docs/benchmarks.md).
``select(2)`` takes microseconds, so a wait with a timeout waits in
``select`` on the epoll descriptor itself, which is readable as soon as any connection is
ready, and then collects the ready connections with a zero-timeout ``epoll_wait``: the
connections stay registered with epoll (one ``select`` descriptor, not 64), a timer fires late
only by the kernel's timer slack (50 µs), and a wait costs one system call more.
"""

from __future__ import annotations

import asyncio
import select
import selectors

# select(2) cannot watch a descriptor numbered FD_SETSIZE (1024 on Linux) or above.
_SELECT_FD_LIMIT = 1024


class PreciseEpollSelector(selectors.EpollSelector):
    """``EpollSelector`` whose timeouts keep their microseconds (see the module docstring)."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout > 0 and self.fileno() < _SELECT_FD_LIMIT:
            select.select([self.fileno()], [], [], timeout)
            timeout = 0
        return super().select(timeout)


def new_event_loop() -> asyncio.AbstractEventLoop:
    return asyncio.SelectorEventLoop(PreciseEpollSelector())
