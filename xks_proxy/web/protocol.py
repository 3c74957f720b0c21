"""aiohttp's HTTP/1.1 protocol handler, with answers to malformed HTTP that echo nothing.

When aiohttp cannot parse a request (a bad request line, header or chunk framing, or the
leftover of a body that was longer than its Content-Length), its own handler answers
``400 text/plain`` with the parser's message, which quotes the offending bytes, and logs a
traceback holding them too. Those bytes can be another request's Base64 plaintext. Here such a
request gets a fixed 400 ValidationException JSON body (xks-spec §7.1) and a closed connection;
it is counted in ``xks_http_protocol_errors_total`` and logged as one line naming only the
parser's error class and the peer address, at most once a minute. aiohttp's other error logs
(``log_exception``) get the same one-line treatment.

Requests are timed from the arrival of their first byte (``request_arrival``), not from when
the handler starts: under load a request waits in the event loop between the two, and that wait
is what KMS sees. The handler records when bytes arrive while no request is being read, hands
that time to the request it becomes, and forgets it once the body is read (``body_read``), so
bytes of a next request start a new clock. A request aiohttp did not get through this handler
(the test client's) is timed from the start of its handler.

XKS API calls skip aiohttp's Application (router, match info, middleware chain: 8 % of the
request's time in a profile under load): ``shortcut`` is called first and answers a request it
takes, or returns None and leaves it to the Application as before. The XKS listener's shortcut
takes exactly the requests the router would send to the XKS endpoint anyway (web/app.py,
``xks_shortcut``).

``LINGER_SECONDS`` replaces aiohttp's 10-second lingering read: after an error answer to a
body the proxy did not read to its end (over the cap, or stalled), aiohttp reads and drops what
still arrives before closing, so the answer reaches the client instead of being overtaken by a
TCP reset. A quarter second is enough for that on any network KMS reaches the proxy through,
and it closes the connection well within a second of the answer instead of holding it for 10 s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from xks_proxy.errors import InternalError, ValidationError, XksError
from xks_proxy.throttled_log import ThrottledWarning
from xks_proxy.web.request import XksRequest
from xks_proxy.web.responses import Answer, error_json

log = logging.getLogger(__name__)
LINGER_SECONDS = 0.25
# One throttle per kind, so a flood of one cannot hide the first report of the other.
_malformed = ThrottledWarning(log)
_failed = ThrottledWarning(log)


class MalformedHttpError(ValidationError):
    default_message = "The request is not well-formed HTTP/1.1."


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
# The XKS endpoint's entry: a coroutine function (web/inline.py runs its first step by hand).
AnswerHandler = Callable[[XksRequest], Coroutine[Any, Any, Answer]]
# Returns the handler for a request it takes, or None for the Application's routing.
Shortcut = Callable[[XksRequest], AnswerHandler | None]


def _with_shortcut(shortcut: Shortcut, routed: Handler) -> Handler:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        taken = shortcut(request)
        if taken is None:
            return await routed(request)
        return (await taken(request)).response()

    return handle


class XksRequestHandler(RequestHandler):
    """aiohttp's request handler for one connection, with ``handle_error`` replaced."""

    __slots__ = ("_first_byte_at", "_on_protocol_error", "_shortcut")

    def __init__(
        self,
        manager: web.Server,
        *,
        on_protocol_error: Callable[[], None],
        shortcut: Shortcut | None = None,
        **options: Any,
    ) -> None:
        super().__init__(manager, **options)
        self._on_protocol_error = on_protocol_error
        self._first_byte_at: float | None = None
        self._shortcut = shortcut
        if shortcut is not None and self._request_handler is not None:
            self._request_handler = _with_shortcut(shortcut, self._request_handler)

    def data_received(self, data: bytes) -> None:
        if self._first_byte_at is None:
            self._first_byte_at = time.perf_counter()
        super().data_received(data)

    def take_first_byte_time(self) -> float | None:
        """The ``perf_counter`` time the current request's first byte arrived (once)."""
        arrived, self._first_byte_at = self._first_byte_at, None
        return arrived

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp calls this for parse errors (400) and for failures of its own (5xx).

        ``message`` and ``exc`` may quote request bytes, so neither reaches the answer or the
        log: only the exception's class name does.
        """
        if request.writer.output_size > 0:
            # As in aiohttp: part of an answer went out, no other answer can follow.
            raise ConnectionError("an answer was already sent; closing the connection")
        error: XksError
        if status < 500:
            self._on_protocol_error()
            error = MalformedHttpError()
            _malformed.warn(
                "refused malformed HTTP from %s (%s)", request.remote, type(exc).__name__
            )
        else:
            error = InternalError()
            _failed.warn("the HTTP layer failed (%s)", type(exc).__name__)
        response = error_json(error)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's tracebacks (an "Unhandled exception" while it drops an unread body, say)
        can hold request bytes in their messages: one throttled line with the class only."""
        error = kw.get("exc_info")
        name = type(error).__name__ if isinstance(error, BaseException) else "unknown"
        _failed.warn("the HTTP layer failed (%s)", name)


def request_arrival(request: XksRequest) -> float:
    """When the request's first byte arrived (``perf_counter``), or now if unknown."""
    protocol = request.protocol
    arrived = protocol.take_first_byte_time() if isinstance(protocol, XksRequestHandler) else None
    return time.perf_counter() if arrived is None else arrived


def body_read(request: XksRequest) -> None:
    """The request's body is in: bytes that arrive from now on belong to the next request."""
    protocol = request.protocol
    if isinstance(protocol, XksRequestHandler):
        protocol.take_first_byte_time()
