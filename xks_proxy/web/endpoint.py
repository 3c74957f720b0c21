"""The XKS endpoint: one entry for every XKS request, from routing to the JSON answer.

The steps run in the order of xks-spec §7.4: route (404), method (405), concurrency cap (429),
body cap, SigV4 (401), the key store's quota (429), JSON schema and Base64 (400), then the
service (key, size limits, state, usage, crypto) under the request deadline (503
DependencyTimeoutException; web/deadline.py: no timer for an operation that never waits).
Every request is timed from the arrival of its first byte (web/protocol.py). Every outcome,
success or error, is timed, counted and audited in one place, so the order lives in this one
module.

The concurrency cap comes before the body is read: it protects the process's memory, and a
request over it costs nothing but its headers. The key store's quota comes after SigV4, so
unauthenticated traffic cannot use up a key store's quota.

A body over the configured cap gets 501 UnsupportedOperationException (§7.2: "a parameter
exceeds this implementation's supported size") however it is framed: from its Content-Length
before any of it is read, and a chunked body as soon as what arrived passes the cap, including
a small one that arrived whole with its head. A body that does not arrive within
``body_timeout_seconds``, or that breaks off, gets 400 ValidationException. Either way the rest
of the body is not read: the connection closes right after the answer (``LINGER_SECONDS`` in
web/protocol.py).

The audit line is written before the answer leaves. If it cannot be written, ``[audit]
on_failure`` decides: "continue" (the default) sends the answer anyway; "refuse" replaces a
successful answer with 500 InternalException. An Encrypt or Decrypt has run by then, but its
result is dropped, never sent: the XKS operations change no state, so withholding the result is
the same as not running them, and KMS retries a 500 (§7.3).

GET and other methods on an API path get 405 with ``Allow: POST``; the spec names no errorName
for it (§12 item 11), so the body says UnsupportedOperationException.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar

from aiohttp import web

from xks_proxy import model, sigv4
from xks_proxy.audit import AuditRecord
from xks_proxy.config import AUDIT_ON_FAILURE
from xks_proxy.errors import (
    AuthenticationFailedError,
    DependencyTimeoutError,
    InternalError,
    ThrottlingError,
    UnsupportedOperationError,
    ValidationError,
    XksError,
)
from xks_proxy.metrics import SUCCESS
from xks_proxy.runtime import LiveRuntime, ProxyRuntime
from xks_proxy.service import KeyStore
from xks_proxy.web import routing
from xks_proxy.web.connection import request_finished, request_started
from xks_proxy.web.deadline import within_deadline
from xks_proxy.web.protocol import body_read, request_arrival
from xks_proxy.web.request import XksRequest
from xks_proxy.web.responses import Answer, error_answer, json_answer
from xks_proxy.web.routing import GET_HEALTH_STATUS, Route, resolve

log = logging.getLogger(__name__)
# Not an XKS errorName: the outcome of a request whose client left before the answer.
CANCELLED = "Cancelled"
CLIENT_CLOSED_REQUEST = 499


class MethodNotAllowedError(UnsupportedOperationError):
    http_status: ClassVar[int] = 405
    default_message = "The XKS API accepts only POST."


class BodyTooLargeError(UnsupportedOperationError):
    pass


class BodyTimeoutError(ValidationError):
    default_message = "The request body did not arrive in time."


class BodyIncompleteError(ValidationError):
    default_message = "The request body is incomplete or malformed."


class AuditUnavailableError(InternalError):
    default_message = "The audit log cannot be written; the answer is withheld."


REFUSE = AUDIT_ON_FAILURE[1]


def answer_for(error: XksError) -> Answer:
    answer = error_answer(error)
    if isinstance(error, MethodNotAllowedError):
        answer.allow = "POST"
    if isinstance(error, BodyTooLargeError | BodyTimeoutError | BodyIncompleteError):
        # Part of the body may still be unread: the connection cannot carry another request.
        answer.close = True
    return answer


def _too_large(cap: int) -> BodyTooLargeError:
    # Built only when raised: an exception object per request is a cost on the hot path.
    return BodyTooLargeError(f"The request body exceeds {cap} bytes.")


async def read_capped_body(request: XksRequest, cap: int, timeout: float) -> bytes:
    length = request.content_length
    if length is not None and length > cap:
        raise _too_large(cap)
    try:
        if request.content.is_eof():
            # The whole body has already arrived (the usual case): no timer, no loop, not even
            # a coroutine (read_nowait takes what is buffered, here all of it). A chunked body
            # has no Content-Length, so its size is checked here too.
            body = request.content.read_nowait()
            if len(body) > cap:
                raise _too_large(cap)
            return body
        chunks: list[bytes] = []
        size = 0
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > cap:
                    raise _too_large(cap)
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeoutError() from None
    except (ConnectionError, web.RequestPayloadError):
        # The client left mid-body, or the body's framing broke: nothing of it is quoted.
        raise BodyIncompleteError() from None
    return b"".join(chunks)


def authenticate(
    store: KeyStore, request: XksRequest, body: bytes, now: Callable[[], Any]
) -> sigv4.Credential:
    try:
        return sigv4.verify(
            method=request.method,
            path=request.rel_url.raw_path,
            query=request.rel_url.raw_query_string,
            headers=request.headers.items(),
            body=body,
            credentials=store.credentials,
            region=store.config.region,
            now=now(),
        )
    except sigv4.SignatureError as error:
        raise AuthenticationFailedError(f"Authentication failed: {error}.") from None


class XksEndpoint:
    """Serves every XKS API path of every configured key store."""

    def __init__(self, live: LiveRuntime) -> None:
        self._live = live
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The Application's route (requests the shortcut does not take: GET, Expect...)."""
        return (await self.answer(request)).response()

    async def answer(self, request: XksRequest) -> Answer:
        """Every XKS request's answer, whichever way it then leaves (web/inline.py)."""
        # One runtime for the whole request, even if a reload swaps it meanwhile.
        runtime = self._live.current
        started = request_arrival(request)
        connection = request_started(request)
        record = AuditRecord()
        # Exported as xks_requests_in_flight (ProxyMetrics.count_in_flight, web/app.py).
        self._in_flight += 1
        error: XksError | None = None
        try:
            answer = await self._handle(runtime, request, record)
        except XksError as raised:
            error = raised
        except asyncio.CancelledError:
            # The client went away (or shutdown gave up on it): still counted and audited.
            record.outcome, record.status = CANCELLED, CLIENT_CLOSED_REQUEST
            self._account(runtime, record, started, None)
            raise
        except Exception:
            log.exception("unexpected failure handling %s", record.operation)
            error = InternalError()
        finally:
            self._in_flight -= 1
        if error is not None:
            record.outcome = error.error_name
            record.authz_policies = error.audit_policies
            answer = answer_for(error)
        record.status = answer.status
        withheld = self._account(runtime, record, started, error)
        if withheld is not None:
            answer = answer_for(withheld)
        if request_finished(connection):
            answer.close = True
        return answer

    @staticmethod
    def _account(
        runtime: ProxyRuntime, record: AuditRecord, started: float, error: XksError | None
    ) -> XksError | None:
        """The audit line and metrics, once per request whatever happened to it.

        Returns the error to answer instead when the audit line could not be written and
        ``[audit] on_failure = "refuse"`` withholds a successful answer.
        """
        elapsed = time.perf_counter() - started
        record.latency_ms = elapsed * 1000
        withheld: XksError | None = None
        audited = runtime.audit is None or runtime.audit.write(record)
        if not audited and record.outcome == SUCCESS and runtime.config.audit.on_failure == REFUSE:
            withheld = AuditUnavailableError()
            record.outcome = withheld.error_name
        answered = withheld or error
        runtime.metrics.observe_request(
            record.operation,
            record.key_store or "-",
            record.outcome,
            answered is not None and answered.retryable,
            elapsed,
        )
        return withheld

    async def _handle(
        self, runtime: ProxyRuntime, request: XksRequest, record: AuditRecord
    ) -> Answer:
        server = runtime.config.server
        route = resolve(runtime.key_stores, request.rel_url.raw_path)
        record.operation = route.operation
        record.key_store = route.key_store.name
        if request.method != "POST":
            raise MethodNotAllowedError()
        if self._in_flight > server.max_concurrent_requests:
            raise ThrottlingError("The proxy is at its limit of concurrent requests.")
        body = await read_capped_body(request, server.max_body_bytes, server.body_timeout_seconds)
        body_read(request)
        credential = authenticate(route.key_store, request, body, runtime.clock)
        record.access_key_id = credential.access_key_id
        route.key_store.admit()
        document = model.load_json_object(body)
        try:
            result = await within_deadline(
                self._operate(runtime, route, document, record), server.request_deadline_ms / 1000
            )
        except TimeoutError:
            raise DependencyTimeoutError(
                f"The key backend did not answer within {server.request_deadline_ms} ms."
            ) from None
        finally:
            if record.metadata is None:
                # The request failed before its metadata was validated: audit what it says.
                record.metadata = model.audit_metadata(document)
        return json_answer(result)

    async def _operate(
        self, runtime: ProxyRuntime, route: Route, document: dict[str, Any], record: AuditRecord
    ) -> dict[str, Any]:
        # Each parsed request's metadata goes to the audit record as it is: once validated, it
        # is what ``model.audit_metadata`` would read, built once instead of twice.
        service = runtime.service
        store = route.key_store
        if route.operation == GET_HEALTH_STATUS:
            health = model.parse_health(document)
            record.metadata = health.metadata
            return service.health(store, health)
        assert route.raw_key_id is not None
        key_id = record.key_id = model.parse_key_id(route.raw_key_id)
        match route.operation:
            case routing.GET_KEY_METADATA:
                describe = model.parse_key_metadata(document)
                record.metadata = describe.metadata
                return await service.get_key_metadata(store, key_id, describe)
            case routing.ENCRYPT:
                encrypt = model.parse_encrypt(document)
                record.metadata = encrypt.metadata
                return await service.encrypt(store, key_id, encrypt)
            case routing.DECRYPT:
                decrypt = model.parse_decrypt(document)
                record.metadata = decrypt.metadata
                return await service.decrypt(store, key_id, decrypt)
        raise AssertionError(f"unrouted operation {route.operation}")
