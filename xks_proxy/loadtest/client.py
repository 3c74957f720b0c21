"""A lean HTTP/1.1 keep-alive client for the load generator: pre-built requests, a pool of
connections, responses framed by httptools (the C parser uvicorn uses).

Why not aiohttp's ``ClientSession``: at the rates the generator must offer (1,800 requests/s,
AWS's per-key-store quota) it cost about as much CPU per request as the proxy under test
spends serving one (a py-spy profile: ``ClientSession._request``, header preparation, the
connector's bookkeeping), so one generator process ran out of core before the proxy did and
its queue was read as the proxy's latency. Here a request is one ``transport.write`` of bytes
made once a second (the signature's date changes then) and one future resolved by the parser.

Error names stay those of aiohttp (``ClientConnectorError``, ``ServerDisconnectedError``,
``ClientResponseError``, ``TimeoutError``), which reports and scripts already count by.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from urllib.parse import urlsplit

import httptools


class ClientError(Exception):
    """A request that got no HTTP answer; its class name is what the report counts."""


class ClientConnectorError(ClientError):
    """The connection (TCP or the TLS handshake) could not be made."""


class ServerDisconnectedError(ClientError):
    """The server closed the connection before it answered."""


class ClientResponseError(ClientError):
    """The answer was not HTTP/1.1 that could be framed."""


def request_bytes(path: str, headers: dict[str, str], body: bytes) -> bytes:
    """One POST, ready to write: request line, headers, Content-Length and body."""
    lines = [f"POST {path} HTTP/1.1", *(f"{name}: {value}" for name, value in headers.items()),
             f"Content-Length: {len(body)}", "", ""]  # fmt: skip
    return "\r\n".join(lines).encode("latin-1") + body


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._body: list[bytes] = []
        self.alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(ClientResponseError(str(error)))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self._fail(ServerDisconnectedError("the server closed the connection"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body, self._body = b"".join(self._body), []
        if not self._parser.should_keep_alive():
            self.close()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._parser.get_status_code(), body))

    def send(self, payload: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self._transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(payload)
        return self._waiter

    def close(self) -> None:
        self.alive = False
        if self._transport is not None:
            self._transport.close()

    def _fail(self, error: ClientError) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)


class HttpClient:
    """At most ``limit`` connections to one origin; callers beyond it wait their turn (that
    wait is part of the latency the generator measures, as it was with aiohttp's limit)."""

    def __init__(self, url: str, context: ssl.SSLContext | None, limit: int) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._context = context
        self._limit = limit
        self._opened = 0  # open or opening
        self._idle: list[_Connection] = []
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._all: set[_Connection] = set()

    async def post(self, payload: bytes) -> tuple[int, bytes]:
        """Status and body of the answer to one pre-built request."""
        connection = await self._acquire()
        try:
            answer = await connection.send(payload)
        except BaseException:
            # A timed-out or failed exchange leaves the connection out of step: drop it.
            connection.close()
            self._release(connection)
            raise
        self._release(connection)
        return answer

    async def warm_up(self, count: int) -> int:
        """Open up to ``count`` connections at once and keep them idle; how many opened.

        A run's schedule then starts on connections already made, as a client that has been
        sending for a while has them. Opened lazily instead, the first requests each open one
        (every request due during a handshake finds none idle), so a run began with one TLS
        handshake per connection on the target at the same moment: on one proxy core at about
        1.5 ms each, 64 of them stalled it for 100 ms, and that start-up stall alone was the p99
        of a 20-second run at 1,800 requests/s. A connection that fails here is not an error:
        the requests that need one open it and report their own failure."""
        count = max(0, min(count, self._limit - self._opened))
        self._opened += count
        opened = await asyncio.gather(*(self._open() for _ in range(count)),
                                      return_exceptions=True)  # fmt: skip
        for connection in opened:
            if isinstance(connection, _Connection):
                self._idle.append(connection)
            elif isinstance(connection, ClientError):
                self._opened -= 1
            else:
                raise connection
        return sum(isinstance(connection, _Connection) for connection in opened)

    async def close(self) -> None:
        for connection in self._all:
            connection.close()
        self._all.clear()
        await asyncio.sleep(0)  # let the transports run their connection_lost

    async def _acquire(self) -> _Connection:
        while True:
            while self._idle:
                connection = self._idle.pop()
                if connection.alive:
                    return connection
                self._forget(connection)
            if self._opened < self._limit:
                self._opened += 1
                try:
                    return await self._open()
                except BaseException:
                    self._opened -= 1
                    self._wake_one()
                    raise
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # it was woken and leaves: pass the turn on
                raise

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                _Connection, self._host, self._port, ssl=self._context
            )
        except OSError as error:  # ssl.SSLError is one too
            raise ClientConnectorError(f"{self._host}:{self._port}: {error}") from error
        self._all.add(connection)
        return connection

    def _release(self, connection: _Connection) -> None:
        if connection.alive:
            self._idle.append(connection)
        else:
            self._forget(connection)
        self._wake_one()

    def _forget(self, connection: _Connection) -> None:
        self._all.discard(connection)
        self._opened -= 1

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
