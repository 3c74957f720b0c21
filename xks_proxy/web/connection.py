"""Connections in front of aiohttp's HTTP protocol: TLS handshake, peer check, timeouts, drain.

Every accepted connection gets an ``XksConnection``. It runs the TLS handshake itself with
``loop.start_tls`` using the *current* TLS context, so a reload swaps certificates for new
connections without touching open ones; it checks the mTLS subject before any HTTP is parsed;
it cuts off a client that takes longer than ``header_timeout`` to deliver a request head (slow
loris; one timer per connection, re-armed when it fires, not one per request); and it knows
whether its connection is idle, which is what a graceful drain needs.

Why not aiohttp's own shutdown: ``AppRunner.cleanup`` calls ``close()`` on every connection
first, and a closed aiohttp connection discards incoming data, so a request whose body is still
arriving when SIGTERM comes never completes. ``drain()`` here stops accepting, lets every
request that has started finish (telling its client ``Connection: close``), closes connections
only while they are idle, and gives up after the drain period.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from xks_proxy.web.inline import InlineRequestHandler
from xks_proxy.web.protocol import Shortcut, XksRequestHandler
from xks_proxy.web.request import XksRequest
from xks_proxy.web.tls import TlsState

log = logging.getLogger(__name__)


class ConnectionRegistry:
    """The live connections of one process, and the process-wide draining flag."""

    def __init__(self, on_tls_failure: Callable[[], None] = lambda: None) -> None:
        self.connections: set[XksConnection] = set()
        self.draining = False
        self.tls_failed = on_tls_failure

    async def drain(
        self, timeout: float, still_running: Callable[[], bool] = lambda: False
    ) -> bool:
        """Wait for in-flight requests, closing connections as they go idle; True if all done.

        ``still_running`` covers requests whose client has already gone: they have no
        connection left, but their work (and audit line) should still finish.
        """
        self.draining = True
        deadline = time.monotonic() + timeout
        while True:
            for connection in list(self.connections):
                if connection.idle():
                    connection.close_idle()
            done = not self.connections and not still_running()
            if done or time.monotonic() >= deadline:
                return done
            await asyncio.sleep(0.05)


class XksConnection(asyncio.Protocol):
    def __init__(
        self,
        make_handler: Callable[[], RequestHandler],
        registry: ConnectionRegistry,
        tls: Callable[[], TlsState | None],
        header_timeout: float,
    ) -> None:
        self._make_handler = make_handler
        self._registry = registry
        self._tls = tls
        self._header_timeout = header_timeout
        self._handler: RequestHandler | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._pending: list[bytes] = []
        self._eof = False
        self._handshake: asyncio.Task[None] | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        # When the request head now awaited began to arrive (None: no head awaited).
        self._head_started_at: float | None = None
        self._busy = 0
        self._last_data_at = 0.0
        self._last_done_at = time.monotonic()

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._registry.connections.add(self)
        tls = self._tls()
        if tls is None:
            self._attach(transport)
        else:
            # The ClientHello must reach the TLS layer, not this protocol: no reading until
            # start_tls has taken the transport over (and resumed it). asyncio runs the task
            # before it reads; uvloop, measured for issue 15, delivers the data first.
            transport.pause_reading()  # type: ignore[attr-defined]
            self._handshake = asyncio.ensure_future(self._start_tls(transport, tls))

    def data_received(self, data: bytes) -> None:
        now = self._last_data_at = time.monotonic()
        if not self._busy and self._head_started_at is None:
            self._head_started_at = now
            if self._head_timer is None:
                self._arm_head_timer(self._header_timeout)
        if self._handler is None:
            self._pending.append(data)
        else:
            self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        if self._handler is None:
            self._eof = True
            return None
        return self._handler.eof_received()  # type: ignore[func-returns-value]

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        if self._handshake is not None and not self._handshake.done():
            self._handshake.cancel()
        if self._handler is not None:
            self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()

    # -- set-up ------------------------------------------------------------------------------
    async def _start_tls(self, raw: asyncio.BaseTransport, tls: TlsState) -> None:
        loop = asyncio.get_running_loop()
        try:
            secure = await loop.start_tls(
                raw,  # type: ignore[arg-type]
                self,
                tls.context,
                server_side=True,
                ssl_handshake_timeout=self._header_timeout,
            )
        except (OSError, ConnectionError, TimeoutError, asyncio.CancelledError) as error:
            self._registry.tls_failed()
            log.info("TLS handshake failed: %s", type(error).__name__)
            raw.abort()  # type: ignore[attr-defined]
            forget_frames(error)
            self._forget()
            return
        if secure is None:
            self._forget()
            return
        allowed, names = tls.client_allowed(secure.get_extra_info("peercert"))
        if not allowed:
            self._registry.tls_failed()
            log.warning("client certificate CN %r is not allowed; closing", names)
            secure.abort()
            self._forget()
            return
        self._transport = secure
        self._attach(secure)

    def _attach(self, transport: asyncio.BaseTransport) -> None:
        self._handler = self._make_handler()
        self._handler.connection_made(transport)
        pending, self._pending = self._pending, []
        for data in pending:
            self._handler.data_received(data)
        if self._eof:
            self._handler.eof_received()

    # -- request life cycle (called by the middleware) ------------------------------------------
    def request_started(self) -> None:
        self._busy += 1
        # The head timer stays armed: a timer per request (armed, then cancelled) is a cost on
        # the hot path; when it fires it re-arms for the head awaited then, if any.
        self._head_started_at = None

    def request_finished(self) -> None:
        self._busy -= 1
        self._last_done_at = time.monotonic()

    def idle(self) -> bool:
        """No request running and no byte of a next one received since the last finished."""
        return (
            self._handler is not None
            and not self._busy
            and (self._last_data_at <= self._last_done_at)
        )

    @property
    def draining(self) -> bool:
        return self._registry.draining

    def close_idle(self) -> None:
        """Close a connection that ``idle()`` said has nothing in flight."""
        if self._handler is not None:
            self._handler.force_close()

    def _forget(self) -> None:
        """The connection is over. Also called when a handshake fails: ``start_tls`` has given
        the socket to asyncio's TLS protocol by then, which tells this one nothing of a connection
        lost before the handshake completed, so without this a failed handshake stayed in the
        registry for good (a leak per failed handshake, and a drain that waited its full period
        for a connection long gone)."""
        self._registry.connections.discard(self)
        self._cancel_head_timer()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _arm_head_timer(self, delay: float) -> None:
        self._head_timer = asyncio.get_running_loop().call_later(delay, self._head_too_slow)

    def _head_too_slow(self) -> None:
        self._head_timer = None
        started = self._head_started_at
        if self._busy or started is None or self._transport is None:
            return  # no head awaited now: the next data arms the timer again
        waited = time.monotonic() - started
        if waited < self._header_timeout:
            self._arm_head_timer(self._header_timeout - waited)
            return
        log.info("closing a connection that did not send a request head in time")
        self._transport.abort()  # type: ignore[attr-defined]


def forget_frames(error: BaseException) -> None:
    """Drop the tracebacks of a failed handshake's exception (and of the exceptions behind it).

    ``loop.start_tls`` awaits a future that holds the exception, and the exception's traceback
    holds ``start_tls``'s frame, which holds that future: a reference cycle per failed handshake
    that keeps the connection's TLS state (a 256 KiB read buffer in asyncio's SSLProtocol)
    until a full garbage collection. Under overload, with clients dropping connections that
    time out mid-handshake, thousands piled up, and the full collections that freed them paused
    the event loop for 0.1 to 2.5 s. Only the exception's class name is logged, so nothing
    needs the frames."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__context__ or current.__cause__


def connection_of(request: XksRequest) -> XksConnection | None:
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, XksConnection) else None


# aiohttp's private attributes this module relies on: ``BaseSite.start`` registers the site
# with its runner, ``BaseSite.stop`` closes ``_server`` and ``AppRunner.addresses`` reads it, so
# the listener created here must be stored there; ``_runner`` is the runner the site was made
# for. tests/test_aiohttp_contract.py fails with a clear message if aiohttp changes them.
BASE_SITE_PRIVATE_ATTRIBUTES = ("_runner", "_server")
LISTEN_BACKLOG = 1024


class XksSite(web.BaseSite):
    """A TCP listener whose connections go through ``XksConnection``."""

    __slots__ = (
        "_bound",
        "_handler_options",
        "_header_timeout",
        "_host",
        "_on_protocol_error",
        "_port",
        "_registry",
        "_reuse_port",
        "_shortcut",
        "_tls",
    )

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        registry: ConnectionRegistry,
        tls: Callable[[], TlsState | None],
        header_timeout: float,
        handler_options: dict[str, Any],
        on_protocol_error: Callable[[], None] = lambda: None,
        reuse_port: bool = False,
        shortcut: Shortcut | None = None,
    ) -> None:
        """``handler_options`` are aiohttp ``RequestHandler`` keyword arguments (the same the
        runner was given); ``on_protocol_error`` is called for each malformed request."""
        super().__init__(runner, backlog=LISTEN_BACKLOG)
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._registry = registry
        self._tls = tls
        self._header_timeout = header_timeout
        self._handler_options = handler_options
        self._on_protocol_error = on_protocol_error
        self._shortcut = shortcut
        self._bound: asyncio.Server | None = None

    @property
    def name(self) -> str:
        scheme = "https" if self._tls() else "http"
        return f"{scheme}://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        if self._bound is not None and self._bound.sockets:
            port: int = self._bound.sockets[0].getsockname()[1]
            return port
        return self._port

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()

        # The XKS listener (the one with a shortcut) answers its usual requests inline.
        kind = XksRequestHandler if self._shortcut is None else InlineRequestHandler

        def handler() -> RequestHandler:
            return kind(
                server,
                loop=loop,
                on_protocol_error=self._on_protocol_error,
                shortcut=self._shortcut,
                **self._handler_options,
            )

        def protocol() -> XksConnection:
            return XksConnection(handler, self._registry, self._tls, self._header_timeout)

        self._server = self._bound = await loop.create_server(
            protocol,
            self._host,
            self._port,
            backlog=LISTEN_BACKLOG,
            reuse_address=True,
            reuse_port=self._reuse_port or None,
        )


def request_started(request: XksRequest) -> XksConnection | None:
    """Tell the request's connection that a request is running (every handler calls this;
    two plain calls cost less than an aiohttp middleware on the hot path)."""
    connection = connection_of(request)
    if connection is not None:
        connection.request_started()
    return connection


def request_finished(connection: XksConnection | None) -> bool:
    """The request is answered; True while draining: its connection closes after the answer."""
    if connection is None:
        return False
    connection.request_finished()
    return connection.draining


@web.middleware
async def report_to_connection(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """For an Application behind ``XksSite`` whose handlers do not report to their connection
    themselves (the admin API). Without it the connection counts no request as running, so the
    head timer, armed by the connection's first byte and never disarmed, cut a keep-alive
    connection ``header_timeout`` after that byte, even in the middle of a request."""
    connection = request_started(request)
    try:
        response = await handler(request)
    finally:
        draining = request_finished(connection)
    if draining:
        response.force_close()
    return response
