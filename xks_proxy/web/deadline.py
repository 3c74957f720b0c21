"""The request deadline, paid only by operations that wait.

An operation on an in-process backend (the software backend, AES-GCM in microseconds) finishes
without ever suspending: it cannot overrun a deadline measured in hundreds of milliseconds, and
arming a timer for it (a heap entry on the event loop, then its cancellation) is pure cost on
the hot path. So the operation runs one step first; if it finishes there, that is its answer.
If it suspends (a PKCS#11 call in a thread, an injected delay), the rest of it runs under
``asyncio.timeout_at`` with the deadline counted from the start, and overrunning raises
``TimeoutError`` as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


class _Resumed:
    """Await the rest of a coroutine that has already run its first step and yielded
    ``first``: what ``await`` does, resumed one step in."""

    __slots__ = ("_coroutine", "_first")

    def __init__(self, coroutine: Coroutine[Any, Any, Any], first: Any) -> None:
        self._coroutine = coroutine
        self._first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, pending = self._coroutine, self._first
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as error:  # cancellation from the task (the deadline too)
                try:
                    pending = coroutine.throw(error)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    pending = coroutine.send(sent)
                except StopIteration as done:
                    return done.value


async def within_deadline(operation: Coroutine[Any, Any, T], seconds: float) -> T:
    """Run ``operation``; ``TimeoutError`` if it has not finished ``seconds`` after the start."""
    deadline = asyncio.get_running_loop().time() + seconds
    try:
        first = operation.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    async with asyncio.timeout_at(deadline):
        resumed: T = await _Resumed(operation, first)
        return resumed
