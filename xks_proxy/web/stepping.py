"""Run a coroutine's first step where you are, and the rest of it somewhere else.

Two places on the hot path start an operation without knowing whether it will suspend: the
request deadline (web/deadline.py) arms a timer only for an operation that waits, and the
inline answer path (web/inline.py) runs the XKS endpoint inside ``data_received`` and hands it
to a task only if it waits. Both send the coroutine its first step by hand; ``Resumed`` then
awaits the rest exactly as ``await`` would have, one step in.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any


class Resumed:
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


class _NextIteration:
    """``await`` it to be resumed on the loop's next iteration (a bare ``yield``, which a
    task answers by scheduling its next step at once)."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        yield


NEXT_ITERATION = _NextIteration()
