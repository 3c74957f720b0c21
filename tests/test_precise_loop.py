"""The load generator's event loop (xks_proxy/loadtest/precise_loop.py): an epoll selector that
waits in select(2) for microsecond timeouts. What must hold is that it loses nothing: ready
connections are reported whether the wait had a timeout or not, and timers and I/O run as on
asyncio's own loop. (How early it wakes is a matter for the benchmark, not a test.)"""

from __future__ import annotations

import asyncio
import selectors
import socket

from xks_proxy.loadtest.precise_loop import PreciseEpollSelector, new_event_loop


def test_a_wait_with_a_timeout_reports_what_is_ready() -> None:
    selector = PreciseEpollSelector()
    left, right = socket.socketpair()
    try:
        selector.register(left, selectors.EVENT_READ, "left")
        assert selector.select(0.0005) == []  # nothing ready: the wait times out, empty
        right.send(b"x")
        for timeout in (0.0005, 0.05, 0, None):
            ready = selector.select(timeout)
            assert [(key.data, events) for key, events in ready] == [("left", selectors.EVENT_READ)]
        left.recv(1)
        assert selector.select(0) == []
    finally:
        selector.close()
        left.close()
        right.close()


def test_timers_and_connections_run_on_the_loop() -> None:
    async def main() -> tuple[list[int], bytes]:
        loop = asyncio.get_running_loop()
        fired: list[int] = []
        done = loop.create_future()
        for i in range(50):  # sub-millisecond timers, in their order
            loop.call_later(i * 0.0001, fired.append, i)
        loop.call_later(0.006, done.set_result, None)

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readexactly(5))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello")
        echoed = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        server.close()
        await done
        return fired, echoed

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, asyncio.SelectorEventLoop)
        assert isinstance(loop._selector, PreciseEpollSelector)  # type: ignore[attr-defined]
        fired, echoed = runner.run(main())
    assert fired == list(range(50)) and echoed == b"hello"
