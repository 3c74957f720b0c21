"""Answering a complete XKS request where it arrives: inside the protocol's ``data_received``.

aiohttp gives each request a trip through its machinery: ``data_received`` parses it and wakes
the connection's ``start()`` task; that task builds a StreamWriter and a Request and starts one
more task for the handler; the handler's Response is then prepared (headers assembled one by
one) and written through the writer, and a keep-alive timer is re-armed. Three or four passes
through the event loop per request, which was most of the "framework" column of `make bench`'s
stage table (issue 15).

For the request KMS sends all day (a POST taken by the XKS shortcut, on a keep-alive HTTP/1.1
connection with nothing else in progress, whose body has fully arrived), ``InlineRequestHandler``
does the same work without the trips: it wraps the parsed message in an ``InlineRequest`` (what
the endpoint reads of a request, web/request.py; no aiohttp Request is built), runs the XKS
endpoint's coroutine at once, and writes the bytes aiohttp would write for the same answer
(status line, Content-Type, Content-Length, Date, Server, and ``Connection: close`` when the
answer closes the connection). When the endpoint suspends (a PKCS#11 call in a thread, an
injected delay), the rest of it runs in a task, and the connection's next requests wait for it,
so answers keep the order of their requests. The request deadline still applies
(web/deadline.py moves a suspended operation into that task before arming it).

Everything else goes aiohttp's way, unchanged: a body still arriving, ``Expect: 100-continue``,
HTTP/1.0 or ``Connection: close``, any method but POST, malformed HTTP, and every request that
arrives while aiohttp is handling one. Requests are answered in order either way: this handler
only answers when aiohttp's ``start()`` task is idle and nothing is queued before the request,
and it wakes that task for the first request it does not take.

This relies on aiohttp's private ``RequestHandler`` state (``INLINE_PRIVATE_ATTRIBUTES``);
tests/test_aiohttp_contract.py fails with a clear message if an aiohttp upgrade changes it.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from aiohttp import web
from aiohttp.hdrs import CONTENT_LENGTH
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11, RawRequestMessage
from aiohttp.streams import StreamReader
from multidict import CIMultiDictProxy
from yarl import URL

from xks_proxy.web.protocol import XksRequestHandler
from xks_proxy.web.responses import JSON, Answer
from xks_proxy.web.stepping import Resumed

# The private parts of aiohttp's RequestHandler that answering inline reads or sets, as its
# start() and _handle_request() do.
INLINE_PRIVATE_ATTRIBUTES = (
    "_waiter",
    "_messages",
    "_parser",
    "_task_handler",
    "_manager",
    "_buffer_paused",
    "_msg_queue_resume_size",
    "_resume_reading_if_drained",
    "_keepalive_timeout",
    "_keepalive_handle",
    "_next_keepalive_close_time",
    "_process_keepalive",
    "_request_in_progress",
    "_handler_waiter",
    "_force_close",
    "_close",
)


class InlineRequest:
    """A request as the endpoint reads it (web/request.py), straight from the parsed message:
    no aiohttp Request is built for a request answered inline."""

    __slots__ = ("_message", "content", "protocol")

    def __init__(
        self, message: RawRequestMessage, payload: StreamReader, protocol: InlineRequestHandler
    ) -> None:
        self._message = message
        self.content = payload
        self.protocol = protocol

    @property
    def method(self) -> str:
        return self._message.method

    @property
    def rel_url(self) -> URL:
        return self._message.url

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._message.headers

    @property
    def content_length(self) -> int | None:
        value = self._message.headers.get(CONTENT_LENGTH)
        return None if value is None else int(value)

    @property
    def transport(self) -> asyncio.Transport | None:
        return self.protocol.transport


@functools.cache
def _head(status: int, allow: str | None) -> str:
    """The status line and the Response's own headers, as aiohttp writes them."""
    reason = web.Response(status=status).reason
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {JSON}\r\n"
    return head if allow is None else f"{head}Allow: {allow}\r\n"


def encode_answer(answer: Answer) -> bytes:
    """The bytes aiohttp writes for ``answer.response()`` to an HTTP/1.1 request: status line,
    the Response's headers, then Content-Length, Date, Server (and Connection: close)."""
    body = answer.body
    end = "Connection: close\r\n\r\n" if answer.close else "\r\n"
    head = (
        f"{_head(answer.status, answer.allow)}Content-Length: {len(body)}\r\n"
        f"Date: {rfc822_formatted_time()}\r\nServer: {SERVER_SOFTWARE}\r\n{end}"
    )
    return head.encode("latin-1") + body


class InlineRequestHandler(XksRequestHandler):
    """``XksRequestHandler`` that answers the requests its shortcut takes inside
    ``data_received`` when it can (see the module docstring), and defers to aiohttp otherwise."""

    __slots__ = ("_answering", "_idle_waiter", "_inline_task")

    def __init__(self, manager: web.Server, **options: Any) -> None:
        super().__init__(manager, **options)
        self._answering = False
        self._inline_task: asyncio.Task[None] | None = None
        # start()'s waiter, put aside while an inline request runs in its task (see _answer).
        self._idle_waiter: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done() or self._shortcut is None:
            # aiohttp's start() is busy with a request (or closing): it takes what follows.
            super().data_received(data)
            return
        # start() is idle. Parse without waking it: what is answered here it never sees.
        self._waiter = None
        try:
            super().data_received(data)
        finally:
            self._waiter = waiter
        if not self._answering and self._inline_task is None:
            self._answer_queued()

    # -- the queue ---------------------------------------------------------------------------
    def _answer_queued(self) -> None:
        """Answer queued requests inline while they qualify; wake start() for the rest."""
        messages = self._messages
        self._answering = True  # aiohttp may re-enter data_received (resuming a paused read)
        try:
            while messages and self._inline_task is None and self._open():
                message, payload = messages[0]
                if not isinstance(message, RawRequestMessage) or not _qualifies(message, payload):
                    break
                messages.popleft()
                if not self._answer(message, payload):
                    messages.appendleft((message, payload))  # the shortcut did not take it
                    break
        finally:
            self._answering = False
        waiter = self._waiter
        if messages and self._inline_task is None and waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _open(self) -> bool:
        return self.transport is not None and not self._force_close and not self._close

    def _consumed(self) -> None:
        # What start() does for each message it takes off the queue.
        if self._parser is not None:
            self._parser.message_consumed()
        if self._buffer_paused and len(self._messages) <= self._msg_queue_resume_size:
            self._resume_reading_if_drained()
        assert self._manager is not None
        self._manager.requests_count += 1

    # -- one request -------------------------------------------------------------------------
    def _answer(self, message: RawRequestMessage, payload: StreamReader) -> bool:
        """Answer one request, or start its task; False if the shortcut does not take it."""
        assert self._shortcut is not None
        request = InlineRequest(message, payload, self)
        handler = self._shortcut(request)
        if handler is None:
            return False
        # Taken: it is this connection's now (what start() does with a message it takes; one
        # the shortcut declines goes back to start(), which does it then).
        self._consumed()
        self._request_in_progress = True
        coroutine = handler(request)
        try:
            first = coroutine.send(None)
        except StopIteration as done:
            self._finish(done.value)
            return True
        except Exception as error:  # the endpoint answers its own failures; this is a bug
            self._finish(None, error)
            return True
        # The endpoint waits: the rest runs in a task. Meanwhile start() must look busy to
        # aiohttp, as it does while it runs a handler itself: with its waiter put aside, data
        # that arrives is queued without waking it, and neither the keep-alive timer nor an
        # idle-connection close cuts this request off.
        self._idle_waiter, self._waiter = self._waiter, None
        self._inline_task = self._loop.create_task(self._complete(Resumed(coroutine, first)))
        return True

    async def _complete(self, rest: Resumed) -> None:
        try:
            answer = await rest
        except asyncio.CancelledError:
            self._finish(None)
            raise
        except Exception as error:
            self._finish(None, error)
        else:
            self._finish(answer)
        finally:
            self._inline_task = None
            waiter, self._idle_waiter = self._idle_waiter, None
            self._waiter = waiter
            if waiter is not None and not self._open():
                # Closed meanwhile: end start() as aiohttp's force_close would have.
                waiter.cancel()
        if self._open():
            self._answer_queued()

    def _finish(self, answer: Answer | None, error: Exception | None = None) -> None:
        """Write the answer (none if the handler failed or was cancelled: the connection
        closes, as aiohttp closes it) and get ready for the next request."""
        self._request_in_progress = False
        waiting = self._handler_waiter
        if waiting is not None and not waiting.done():
            # A shutdown waiting for this request (RequestHandler.shutdown).
            waiting.set_result(None)
        if error is not None:
            self.log_exception("Unhandled exception", exc_info=error)
        transport = self.transport
        if transport is None:
            return  # the client left; nothing to answer
        if answer is None:
            self.force_close()
            return
        transport.write(encode_answer(answer))
        if answer.close:
            self.force_close()
            return
        # start() re-arms the keep-alive timer after each request: the same here.
        close_time = self._loop.time() + self._keepalive_timeout
        self._next_keepalive_close_time = close_time
        if self._keepalive_handle is None:
            self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)


def _qualifies(message: RawRequestMessage, payload: StreamReader) -> bool:
    """A request this handler may answer inline (the shortcut still decides whether it takes
    it): well-formed HTTP/1.1 on a keep-alive connection, its whole body arrived."""
    return (
        message.version == HttpVersion11
        and not message.should_close
        and not message.upgrade
        and payload.is_eof()
    )
