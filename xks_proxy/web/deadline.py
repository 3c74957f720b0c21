"""The request deadline, paid only by operations that wait.

An operation on an in-process backend (the software backend, AES-GCM in microseconds) finishes
without ever suspending: it cannot overrun a deadline measured in hundreds of milliseconds, and
arming a timer for it (a heap entry on the event loop, then its cancellation) is pure cost on
the hot path. So the operation runs one step first; if it finishes there, that is its answer.
If it suspends (a PKCS#11 call in a thread, an injected delay), the rest of it runs under
``asyncio.timeout_at`` with the deadline counted from the start, and overrunning raises
``TimeoutError`` as before.

An operation can also start outside any task, in the inline answer path (web/inline.py). When
it suspends there, ``within_deadline`` first yields once so that the rest of the request moves
into a task, and arms the deadline in that task (counted from the start all the same).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from xks_proxy.web.stepping import NEXT_ITERATION, Resumed

T = TypeVar("T")


async def within_deadline(operation: Coroutine[Any, Any, T], seconds: float) -> T:
    """Run ``operation``; ``TimeoutError`` if it has not finished ``seconds`` after the start."""
    deadline = asyncio.get_running_loop().time() + seconds
    try:
        first = operation.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    if asyncio.current_task() is None:
        # Started inside ``data_received`` (web/inline.py), where there is no task for a
        # timeout to cancel: give the caller a bare yield, which it answers by moving the rest
        # of the request into a task; the deadline still counts from the start.
        await NEXT_ITERATION
    async with asyncio.timeout_at(deadline):
        resumed: T = await Resumed(operation, first)
        return resumed
