"""Requests answered inline, inside ``data_received`` (web/inline.py), against the real
``xks-proxy serve``: the same bytes as aiohttp's own answers, answers in request order when
requests are pipelined (with a backend that answers at once and one that waits), the keep-alive
timeout of a connection only ever answered inline, and a client that leaves mid-request. (The
request deadline on this path: test_transport's slow-backend test, whose requests go inline.)"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import KEY_BOTH, KEY_DISABLED, make_deployment
from tests.proxy_process import ProxyProcess, close_all, open_socket
from tests.test_transport import (
    ENCRYPT_PATH,
    HEALTH_PATH,
    _raw_request,
    configure,
    credential,
)
from tests.xks_client import HEALTH_BODY, encrypt_body


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    close_all()


class Answers:
    """HTTP/1.1 answers read one by one off a socket, exactly (pipelined answers share reads)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the answer was complete")
        self._buffer += chunk

    def next(self) -> tuple[str, list[tuple[str, str]], bytes]:
        """(status line, headers in order, body)."""
        while b"\r\n\r\n" not in self._buffer:
            self._fill()
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        headers = [(k.strip(), v.strip()) for k, v in (line.split(":", 1) for line in lines)]
        length = int(dict((k.lower(), v) for k, v in headers).get("content-length", "0"))
        while len(self._buffer) < length:
            self._fill()
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return status, headers, body

    def closed(self, within: float) -> bool:
        """True once the server closes the connection (nothing more arrives) within the bound."""
        self._sock.settimeout(within)
        try:
            return self._sock.recv(65536) == b""
        except TimeoutError:
            return False


def _error_name(body: bytes) -> str:
    return str(json.loads(body)["errorName"])


@pytest.mark.parametrize("fault_delay_ms", [0, 50], ids=["answers-at-once", "backend-waits"])
def test_pipelined_requests_are_answered_in_order(tmp_path: Path, fault_delay_ms: int) -> None:
    deployment = make_deployment(tmp_path)
    backend = {"fault_delay_ms": fault_delay_ms} if fault_delay_ms else None
    config = configure(deployment, backend=backend)
    cred = credential(deployment)
    disabled = ENCRYPT_PATH.replace(KEY_BOTH, KEY_DISABLED)
    with ProxyProcess(config) as proxy:
        sock = open_socket(proxy.port)
        # Five requests in one write: inline answers, aiohttp's (GET), and errors, interleaved.
        sock.sendall(
            _raw_request(proxy.port, ENCRYPT_PATH, encrypt_body(b"one"), cred)
            + b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
            + b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"
            + _raw_request(proxy.port, disabled, encrypt_body(b"two"), cred)
            + _raw_request(proxy.port, HEALTH_PATH, HEALTH_BODY, cred)
        )
        answers = Answers(sock)
        first = answers.next()
        assert first[0] == "HTTP/1.1 200 OK" and "ciphertext" in json.loads(first[2])
        second = answers.next()
        assert (second[0], _error_name(second[2])) == (
            "HTTP/1.1 404 Not Found",
            "InvalidUriPathException",
        )
        assert answers.next()[0] == "HTTP/1.1 200 OK"  # GET /ping, through aiohttp's router
        fourth = answers.next()
        assert (fourth[0], _error_name(fourth[2])) == (
            "HTTP/1.1 400 Bad Request",
            "InvalidStateException",
        )
        fifth = answers.next()
        assert fifth[0] == "HTTP/1.1 200 OK" and "ekmFleetDetails" in json.loads(fifth[2])
        # The connection stays usable afterwards, request by request.
        for _ in range(3):
            sock.sendall(_raw_request(proxy.port, HEALTH_PATH, HEALTH_BODY, cred))
            assert answers.next()[0] == "HTTP/1.1 200 OK"


def _without_date(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name, "-" if name == "Date" else value) for name, value in headers]


def test_inline_answers_are_the_bytes_aiohttp_writes(tmp_path: Path) -> None:
    """The same request answered inline, and by aiohttp (``Expect: 100-continue`` keeps a
    request out of the inline path): the same status line, headers in the same order, body."""
    deployment = make_deployment(tmp_path)
    cred = credential(deployment)
    with ProxyProcess(deployment.config_path) as proxy:
        signed = _raw_request(proxy.port, HEALTH_PATH, HEALTH_BODY, cred)
        inline = Answers(open_socket(proxy.port))
        inline._sock.sendall(signed)
        inline_answer = inline.next()

        head, _, body = signed.partition(b"\r\n\r\n")
        sock = open_socket(proxy.port)
        sock.sendall(head + b"\r\nExpect: 100-continue\r\n\r\n")
        routed = Answers(sock)
        assert routed.next()[0] == "HTTP/1.1 100 Continue"
        sock.sendall(body)
        routed_answer = routed.next()

        assert inline_answer[0] == routed_answer[0] == "HTTP/1.1 200 OK"
        assert _without_date(inline_answer[1]) == _without_date(routed_answer[1])
        assert inline_answer[2] == routed_answer[2]

        # An answer that closes its connection: a whole body over the cap, sent both ways.
        oversized = b"{" + b" " * 70_000 + b"}"
        request = (
            f"POST {HEALTH_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(oversized)}\r\n"
        ).encode()
        inline = Answers(open_socket(proxy.port))
        inline._sock.sendall(request + b"\r\n" + oversized)
        closing_inline = inline.next()
        assert inline.closed(within=5)
        sock = open_socket(proxy.port)
        sock.sendall(request + b"Expect: 100-continue\r\n\r\n")
        routed = Answers(sock)
        assert routed.next()[0] == "HTTP/1.1 100 Continue"  # the body is never sent
        closing_routed = routed.next()
        assert closing_inline[0] == closing_routed[0] == "HTTP/1.1 501 Not Implemented"
        assert ("Connection", "close") in closing_inline[1]
        assert _without_date(closing_inline[1]) == _without_date(closing_routed[1])
        assert closing_inline[2] == closing_routed[2]


def test_a_connection_answered_only_inline_still_closes_when_idle(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path)
    config = configure(deployment, server={"idle_timeout_seconds": 1})
    cred = credential(deployment)
    with ProxyProcess(config) as proxy:
        sock = open_socket(proxy.port)
        answers = Answers(sock)
        for _ in range(2):
            sock.sendall(_raw_request(proxy.port, HEALTH_PATH, HEALTH_BODY, cred))
            assert answers.next()[0] == "HTTP/1.1 200 OK"
        # aiohttp's keep-alive timer, armed by the inline path: closed after ~1 s idle.
        assert answers.closed(within=10)


def test_a_client_that_leaves_mid_request_is_still_audited(tmp_path: Path) -> None:
    """The client closes while its request waits on the backend: the request finishes (and is
    audited) as on aiohttp's path, nothing is answered, and the proxy serves on."""
    deployment = make_deployment(tmp_path)
    config = configure(
        deployment, server={"request_deadline_ms": 5000}, backend={"fault_delay_ms": 150}
    )
    cred = credential(deployment)
    with ProxyProcess(config) as proxy:
        sock = open_socket(proxy.port)
        sock.sendall(_raw_request(proxy.port, ENCRYPT_PATH, encrypt_body(b"gone"), cred))
        sock.close()
        answers = Answers(open_socket(proxy.port))
        answers._sock.sendall(_raw_request(proxy.port, HEALTH_PATH, HEALTH_BODY, cred))
        assert answers.next()[0] == "HTTP/1.1 200 OK"
        audit = deployment.directory / "audit.log"
        deadline = time.monotonic() + 10
        while '"xksOperation":"Encrypt"' not in audit.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        encrypts = [
            json.loads(line)
            for line in audit.read_text().splitlines()
            if '"xksOperation":"Encrypt"' in line
        ]
        assert [line["status"] for line in encrypts] == [200]
        assert "Traceback" not in proxy.log
