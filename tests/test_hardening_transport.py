"""HTTP-level negative tests of the transport layer (issue 9, findings 4, 5 and 6; finding 1,
the audit volume, is in test_audit_failures.py).

Every test talks to the real ``xks-proxy serve`` process over raw sockets: the bytes must reach
aiohttp's parser exactly as a client sent them, and the process's own log is what is checked for
leaks.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import make_deployment
from tests.proxy_process import ProxyProcess, close_all, open_socket
from tests.test_transport import (
    ENCRYPT_PATH,
    HEALTH_PATH,
    _raw_request,
    _read_response,
    configure,
    credential,
    metric_value,
    metrics_text,
)
from tests.xks_client import HEALTH_BODY, encrypt_body
from xks_proxy import sigv4

# A plaintext that must never come back in an answer or reach a log.
SECRET = b"PLAINTEXT-MUST-NOT-LEAK-4f1c"
SECRET_B64 = base64.b64encode(SECRET)
# "closed within 1 s after the error answer" (issue 9, finding 6): a bound on a hang.
CLOSE_BOUND_SECONDS = 1.0


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    close_all()


# -- framing errors answer a fixed body and log one line (finding 4) --------------------------


def _read_until_closed(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _statuses(data: bytes) -> list[int]:
    return [int(line.split()[1]) for line in data.split(b"\r\n") if line.startswith(b"HTTP/1.")]


def _malformed_requests(port: int, cred: sigv4.Credential) -> dict[str, bytes]:
    """Requests aiohttp cannot parse, each carrying the secret where its parser quotes bytes."""
    signed = _raw_request(port, ENCRYPT_PATH, encrypt_body(SECRET), cred)
    head, _, body = signed.partition(b"\r\n\r\n")
    assert SECRET_B64 in body
    short = head.replace(f"Content-Length: {len(body)}".encode(), b"Content-Length: 5")
    line = f"POST {ENCRYPT_PATH} HTTP/1.1\r\nHost: x\r\n".encode()
    return {
        # the reproduction: the body's leftover is parsed as the next request line
        "body longer than Content-Length": short + b"\r\n\r\n" + body,
        "body as request line": body + b" / HTTP/1.1\r\n\r\n",
        "bad HTTP version": f"POST {ENCRYPT_PATH} HTTP/".encode() + SECRET_B64 + b"\r\n\r\n",
        "control byte in a header": line + b"X-Bad: \x01" + SECRET_B64 + b"\r\n\r\n",
        "header without colon": line + SECRET_B64 + b"\r\n\r\n",
        "bad Content-Length": line + b"Content-Length: " + SECRET_B64 + b"\r\n\r\n",
        "bad chunk size": line + b"Transfer-Encoding: chunked\r\n\r\n" + SECRET_B64 + b"\r\n\r\n",
        "request line too long": b"POST /" + SECRET_B64 * 400 + b" HTTP/1.1\r\n\r\n",
        "header too long": line + b"X-Long: " + SECRET_B64 * 400 + b"\r\n\r\n",
        "Content-Length and chunked": line
        + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        + SECRET_B64,
        "TLS on the plain port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + SECRET_B64,
    }


def test_malformed_http_answers_a_fixed_body_and_logs_one_line(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path)
    cred = credential(deployment)
    with ProxyProcess(deployment.config_path) as proxy:
        requests = _malformed_requests(proxy.port, cred)
        for name, raw in requests.items():
            sock = open_socket(proxy.port)
            sock.sendall(raw)
            answer = _read_until_closed(sock)
            assert SECRET not in answer and SECRET_B64 not in answer, name
            assert _statuses(answer)[-1:] == [400], (name, answer)
            body = json.loads(answer.rpartition(b"\r\n\r\n")[2])
            assert body == {
                "errorName": "ValidationException",
                "errorMessage": "The request is not well-formed HTTP/1.1.",
            }, name
        counted = metric_value(metrics_text(proxy), "xks_http_protocol_errors_total")
        assert counted == len(requests)
        # a well-formed request on a new connection still works
        sock = open_socket(proxy.port)
        sock.sendall(_raw_request(proxy.port, HEALTH_PATH, HEALTH_BODY, cred))
        assert _read_response(sock)[0] == 200
    assert SECRET not in proxy.log.encode() and SECRET_B64 not in proxy.log.encode()
    assert "Traceback" not in proxy.log and "Error handling request" not in proxy.log
    reports = [line for line in proxy.lines if "refused malformed HTTP" in line]
    assert len(reports) == 1, reports  # rate-limited: one line a minute


def test_broken_off_and_encoded_bodies_answer_json_and_log_no_traceback(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path)
    config = configure(deployment, server={"body_timeout_seconds": 1})
    cred = credential(deployment)
    with ProxyProcess(config) as proxy:
        signed = _raw_request(proxy.port, ENCRYPT_PATH, encrypt_body(SECRET), cred)
        head, _, body = signed.partition(b"\r\n\r\n")
        assert SECRET_B64 in body
        length = f"Content-Length: {len(body)}".encode()
        chunked = head.replace(length, b"Transfer-Encoding: chunked")
        # the client leaves with half its body sent: nobody to answer, nothing to log
        leaver = open_socket(proxy.port)
        leaver.sendall(signed[: len(head) + len(body) // 2])
        time.sleep(0.2)
        leaver.close()
        # XKS bodies are plain JSON: a Content-Encoding is not decoded, the bytes fail SigV4
        gzip_head = f"POST {ENCRYPT_PATH} HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
        garbage = b"\x1f\x8b" + SECRET_B64
        encoded = f"{gzip_head}Content-Length: {len(garbage)}\r\n\r\n".encode() + garbage
        # a chunk header breaks after the first chunk arrived
        broken = [chunked + b"\r\n\r\n" + b"10\r\n" + body[:16] + b"\r\n", b"ZZ" + body[16:]]
        for name, parts, expected in (
            ("Content-Encoding: gzip", [encoded], (401, "AuthenticationFailedException")),
            ("chunk framing breaks mid-body", broken, (400, "ValidationException")),
        ):
            sock = open_socket(proxy.port)
            for part in parts:
                sock.sendall(part)
                time.sleep(0.1)
            status, _, answer = _read_response(sock)
            assert (status, json.loads(answer)["errorName"]) == expected, name
            assert SECRET_B64 not in answer, name
        sock = open_socket(proxy.port)
        sock.sendall(_raw_request(proxy.port, HEALTH_PATH, HEALTH_BODY, cred))
        assert _read_response(sock)[0] == 200
    assert "Traceback" not in proxy.log and "unexpected failure" not in proxy.log, proxy.log
    assert SECRET_B64 not in proxy.log.encode()


# -- any body over the cap is 501, however it is framed (finding 5) ----------------------------

CAP = 32 * 1024  # the smallest max_body_bytes the configuration allows


def _signed_of_size(port: int, cred: sigv4.Credential, size: int) -> tuple[dict[str, str], bytes]:
    """A signed Encrypt whose JSON body is exactly ``size`` bytes (padded with whitespace)."""
    body = json.dumps(encrypt_body(b"sized")).encode()
    body = body[:-1] + b" " * (size - len(body)) + b"}"
    assert len(body) == size
    headers = sigv4.sign(
        method="POST",
        path=ENCRYPT_PATH,
        headers={"Host": f"127.0.0.1:{port}", "Content-Type": "application/json"},
        body=body,
        credential=cred,
        region="us-east-1",
        now=datetime.now(UTC),
    )
    return headers, body


def _framed(headers: dict[str, str], body: bytes, framing: str) -> bytes:
    head = f"POST {ENCRYPT_PATH} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    if framing == "content-length":
        return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    step = len(body) if framing == "one chunk" else 1000
    chunks = [body[at : at + step] for at in range(0, len(body), step)]
    encoded = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks)
    return f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + encoded + b"0\r\n\r\n"


def test_a_body_over_the_cap_is_refused_however_it_is_framed(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path, **{"max_body_bytes = 65536": f"max_body_bytes = {CAP}"})
    config = deployment.config_path
    cred = credential(deployment)
    with ProxyProcess(config) as proxy:
        for framing in ("content-length", "one chunk", "1000-byte chunks"):
            for size in (CAP - 1, CAP, CAP + 1, CAP + 1000, 2 * CAP, 4 * CAP, 8 * CAP):
                headers, body = _signed_of_size(proxy.port, cred, size)
                sock = open_socket(proxy.port)
                with contextlib.suppress(OSError):  # the answer may come before the whole body
                    sock.sendall(_framed(headers, body, framing))
                status, _, answer = _read_response(sock)
                case = f"{framing}, {size} bytes"
                if size <= CAP:
                    assert status == 200, (case, answer)
                    assert json.loads(answer)["ciphertext"], case
                else:
                    assert status == 501, (case, answer)
                    assert json.loads(answer)["errorName"] == "UnsupportedOperationException"
                sock.close()


# -- a body that is not read to its end closes the connection at once (finding 6) -------------


def _seconds_until_closed(sock: socket.socket) -> float:
    started = time.monotonic()
    sock.settimeout(30)
    with contextlib.suppress(ConnectionResetError):
        while sock.recv(65536):
            pass
    return time.monotonic() - started


def test_stalled_and_over_cap_bodies_close_within_a_second(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path, **{"max_body_bytes = 65536": f"max_body_bytes = {CAP}"})
    config = configure(deployment, server={"body_timeout_seconds": 1})
    cred = credential(deployment)
    with ProxyProcess(config) as proxy:
        signed = _raw_request(proxy.port, ENCRYPT_PATH, encrypt_body(b"stall"), cred)
        over = f"POST {ENCRYPT_PATH} HTTP/1.1\r\nHost: x\r\n".encode()
        cases = {
            "stalled body": (signed[:-10], 400, "ValidationException"),
            "declared over the cap, no body": (
                over + b"Content-Length: 1073741824\r\n\r\n",
                501,
                "UnsupportedOperationException",
            ),
            "declared over the cap, body streaming": (
                over + b"Content-Length: 1073741824\r\n\r\n" + b"x" * (1 << 20),
                501,
                "UnsupportedOperationException",
            ),
            "chunked over the cap, body streaming": (
                over + b"Transfer-Encoding: chunked\r\n\r\n" + b"10000\r\n" + b"x" * 0x10000,
                501,
                "UnsupportedOperationException",
            ),
        }
        for name, (raw, expected_status, expected_error) in cases.items():
            sock = open_socket(proxy.port)
            with contextlib.suppress(OSError):
                sock.sendall(raw)
            status, headers, body = _read_response(sock)
            assert (status, json.loads(body)["errorName"]) == (expected_status, expected_error)
            assert headers["connection"].lower() == "close", name
            waited = _seconds_until_closed(sock)
            assert waited < CLOSE_BOUND_SECONDS, f"{name}: closed {waited:.1f} s after the answer"
