"""The threads PKCS#11 calls run on (xks_proxy/backends/call_threads.py): real threads, real
event loop."""

from __future__ import annotations

import asyncio
import functools
import threading

import pytest

from xks_proxy.backends.call_threads import CallThreads


async def test_results_and_errors_come_back_from_a_thread() -> None:
    threads = CallThreads(2, "test-calls")
    loop_thread = threading.get_ident()
    assert await threads.run(threading.get_ident) != loop_thread

    def fail() -> None:
        raise ValueError("from the thread")

    with pytest.raises(ValueError, match="from the thread"):
        await threads.run(fail)
    threads.close()


async def test_many_calls_at_once_each_get_their_own_answer() -> None:
    threads = CallThreads(4, "test-calls")
    answers = await asyncio.gather(*(threads.run(functools.partial(pow, n, 2)) for n in range(500)))
    assert answers == [n * n for n in range(500)]
    threads.close()


async def test_then_runs_on_the_loop_after_the_call_even_when_the_caller_gave_up() -> None:
    """The PKCS#11 session goes back to its pool only when its thread is done with it."""
    threads = CallThreads(1, "test-calls")
    release = threading.Event()
    done_on: list[int] = []
    finished = asyncio.Event()

    def then() -> None:
        done_on.append(threading.get_ident())
        finished.set()

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(threads.run(lambda: release.wait(10), then=then), 0.05)
    assert not done_on, "then ran before the call returned"
    release.set()
    await asyncio.wait_for(finished.wait(), 10)
    assert done_on == [threading.get_ident()]
    threads.close()


async def test_close_ends_the_threads_and_refuses_new_calls() -> None:
    threads = CallThreads(3, "test-calls-close")
    await threads.run(lambda: None)
    started = [each for each in threading.enumerate() if each.name.startswith("test-calls-close")]
    assert len(started) == 3
    threads.close()
    for each in started:
        each.join(timeout=5)
        assert not each.is_alive()
    with pytest.raises(RuntimeError):
        threads.run(lambda: None)


def test_calls_from_two_event_loops_settle_on_their_own_loops() -> None:
    """Outcomes are batched per event loop: a call never settles on another loop."""
    threads = CallThreads(4, "test-calls-loops")
    results: dict[str, list[int]] = {}

    async def many() -> list[int]:
        # A future settled from another loop's thread would leave this loop asleep: no answer.
        calls = (threads.run(functools.partial(pow, n, 3)) for n in range(300))
        return list(await asyncio.wait_for(asyncio.gather(*calls), 20))

    def run_loop(name: str) -> None:
        results[name] = asyncio.run(many())

    runners = [threading.Thread(target=run_loop, args=(name,)) for name in ("a", "b")]
    for each in runners:
        each.start()
    for each in runners:
        each.join(timeout=30)
    assert results == {name: [n**3 for n in range(300)] for name in ("a", "b")}
    threads.close()
