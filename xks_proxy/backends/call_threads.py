"""The threads blocking PKCS#11 calls run on, and the one hop back to the event loop.

A call on a network HSM can take as long as the network does, so it never runs on the event
loop thread (the request deadline keeps working while it blocks). What the hop costs is paid per
request, so it is kept to the least: a job is a plain callable on a ``queue.SimpleQueue`` read by
long-lived daemon threads, and its outcome goes back to the event loop, where it runs the
caller's ``then`` (the session goes back to its pool) and settles an asyncio future. Outcomes
are handed over in batches: a call that finishes while an earlier one still waits for the loop
joins it, so a busy loop is woken (a byte through its self-pipe) once per batch, not per call.
``ThreadPoolExecutor`` with ``asyncio.wrap_future`` did more per call: a ``concurrent.futures``
future with its condition and lock, a done callback that chains it to an asyncio future, the
executor's idle semaphore, and a second ``call_soon_threadsafe`` (one more byte through the
loop's self-pipe) to give the session back (measured in tools/bench.py's PKCS#11 notes).

Daemon threads: a call stuck in a dead HSM must not keep the process from exiting.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class CallThreads:
    """``count`` threads, started on first use, each running one job at a time."""

    def __init__(self, count: int, name: str) -> None:
        self._count = count
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._closed = False
        # Outcomes waiting for their event loop; a loop has an entry only while a drain is
        # scheduled on it, so one wake carries every call that finished before it got to run.
        self._done: dict[asyncio.AbstractEventLoop, list[Callable[[], None]]] = {}
        self._done_lock = threading.Lock()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def _start(self) -> None:
        for number in range(self._count):
            thread = threading.Thread(target=self._serve, name=f"{self._name}_{number}",
                                      daemon=True)  # fmt: skip
            thread.start()
            self._threads.append(thread)

    def run(
        self, call: Callable[[], T], then: Callable[[], None] | None = None
    ) -> asyncio.Future[T]:
        """An asyncio future of ``call()`` run on a thread. ``then`` runs on the event loop once
        the call has returned or raised, even when the future was cancelled meanwhile."""
        if self._closed:
            raise RuntimeError("the PKCS#11 call threads are closed")
        if not self._threads:
            self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            if then is not None:
                then()
            if future.cancelled():
                return
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

        def job() -> None:
            try:
                result: Any = call()
            except BaseException as error:
                outcome: tuple[Any, BaseException | None] = (None, error)
            else:
                outcome = (result, None)
            with self._done_lock:
                waiting = self._done.get(loop)
                if waiting is not None:
                    waiting.append(lambda: settle(*outcome))
                    return
                self._done[loop] = [lambda: settle(*outcome)]
            try:
                loop.call_soon_threadsafe(self._drain, loop)
            except RuntimeError:  # the loop closed while the call ran
                with self._done_lock:
                    self._done.pop(loop, None)

        self._jobs.put(job)
        return future

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._done_lock:
            done = self._done.pop(loop, [])
        for settle in done:
            try:
                settle()
            except Exception:  # one failure must not strand the other sessions
                log.exception("settling a PKCS#11 call failed")

    def close(self) -> None:
        """Let every thread end once its current job is done (none waits for it)."""
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)
