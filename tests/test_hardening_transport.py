"""HTTP-level negative tests of the transport layer (issue 9, findings 1, 4, 5 and 6).

Every test talks to a real proxy over loopback: the ``xks-proxy serve`` process over raw
sockets for framing (the bytes must reach aiohttp's parser as a client sent them), and the
in-process app for the audit volume faults, which use real failing files: ``/dev/full``
(ENOSPC on every write), an audit path that became a directory (EISDIR on reopen) and, as root,
a full tmpfs.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from tests.conftest import KEY_BOTH, Deployment, make_deployment
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
from tests.xks_client import HEALTH_BODY, XksClient, decrypt_body, encrypt_body
from xks_proxy import audit, sigv4
from xks_proxy.config import AuditConfig, load_config
from xks_proxy.errors import ConfigError
from xks_proxy.runtime import ProxyRuntime
from xks_proxy.throttled_log import ThrottledWarning
from xks_proxy.web.app import create_app

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


# -- a failing audit volume never costs a JSON answer (finding 1) ----------------------------


async def _audited_client(
    deployment: Deployment,
    aiohttp_client: Any,
    path: str,
    on_failure: str = AuditConfig.on_failure,
) -> tuple[ProxyRuntime, XksClient]:
    config = replace(deployment.config, audit=AuditConfig(path=path, on_failure=on_failure))
    runtime = ProxyRuntime(config)
    client = await aiohttp_client(create_app(runtime))
    store = config.key_stores[0]
    return runtime, XksClient(client, store.uri_path, store.region, store.credentials[0])


def _failures(runtime: ProxyRuntime) -> float:
    text = generate_latest(runtime.metrics.registry).decode()
    return metric_value(text, "xks_audit_write_failures_total")


def _audit_reports(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "cannot write the audit log" in r.getMessage()]


def _directory_at(path: Path) -> None:
    """Logrotate moved the file away and something made a directory in its place."""
    path.unlink()
    path.mkdir()


def _dev_full(tmp: Path) -> tuple[str, Callable[[], None]]:
    return "/dev/full", lambda: None


def _replaced_by_directory(tmp: Path) -> tuple[str, Callable[[], None]]:
    return str(tmp / "audit.log"), lambda: _directory_at(tmp / "audit.log")


# Real failing files: every write gets ENOSPC; or the reopen after rotation gets EISDIR.
AUDIT_FAULTS = {"/dev/full": _dev_full, "directory": _replaced_by_directory}


@pytest.mark.parametrize("fault", sorted(AUDIT_FAULTS))
async def test_a_failing_audit_write_still_answers_by_default(
    fault: str,
    software_deployment: Deployment,
    tmp_path: Path,
    aiohttp_client: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(audit, "ROTATION_CHECK_SECONDS", 0.0)
    path, break_it = AUDIT_FAULTS[fault](tmp_path)
    runtime, xks = await _audited_client(software_deployment, aiohttp_client, path)  # default
    break_it()
    caplog.set_level(logging.WARNING)
    encrypted = await xks.call("encrypt", KEY_BOTH, encrypt_body(SECRET))
    for _ in range(4):
        await xks.call("encrypt", KEY_BOTH, encrypt_body(SECRET))
    await xks.call("decrypt", KEY_BOTH, decrypt_body(encrypted))
    response = await xks.post("encrypt", KEY_BOTH, encrypt_body(SECRET), region="eu-west-1")
    assert response.status == 401 and response.content_type == "application/json"
    assert _failures(runtime) == 7
    reports = _audit_reports(caplog)
    assert len(reports) == 1 and reports[0].exc_info is None
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("fault", sorted(AUDIT_FAULTS))
async def test_refuse_withholds_successful_answers_when_the_audit_write_fails(
    fault: str,
    software_deployment: Deployment,
    tmp_path: Path,
    aiohttp_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(audit, "ROTATION_CHECK_SECONDS", 0.0)
    path, break_it = AUDIT_FAULTS[fault](tmp_path)
    runtime, xks = await _audited_client(
        software_deployment, aiohttp_client, path, on_failure="refuse"
    )
    break_it()
    for operation, key_id, document in (
        ("encrypt", KEY_BOTH, encrypt_body(SECRET)),
        ("health", None, HEALTH_BODY),
    ):
        response = await xks.post(operation, key_id, document)
        assert response.status == 500 and response.content_type == "application/json"
        answer = await response.read()
        assert json.loads(answer)["errorName"] == "InternalException"
        assert SECRET_B64 not in answer and b"ciphertext" not in answer
    # an error answer releases nothing: it goes out as it is
    response = await xks.post("encrypt", KEY_BOTH, encrypt_body(SECRET), region="eu-west-1")
    assert response.status == 401
    assert _failures(runtime) == 3
    text = generate_latest(runtime.metrics.registry).decode()
    internal = [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("xks_errors_total{") and 'error_name="InternalException"' in line
    ]
    assert sum(internal) == 2


def test_a_repeated_warning_is_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    warning = ThrottledWarning(logging.getLogger("throttled"), interval=60, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, "throttled")
    for _ in range(3):
        warning.warn("disk %s is full", "audit")
    now[0] += 59
    warning.warn("disk %s is full", "audit")
    assert [r.getMessage() for r in caplog.records] == ["disk audit is full"]
    now[0] += 1
    warning.warn("disk %s is full", "audit")
    assert caplog.records[-1].getMessage() == "disk audit is full (3 more since the last report)"


def _mount_tmpfs(target: Path, size: str) -> bool:
    target.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
        capture_output=True,
        check=False,
    )
    return mounted.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
async def test_a_full_audit_volume_recovers_with_whole_lines(
    software_deployment: Deployment, tmp_path: Path, aiohttp_client: Any
) -> None:
    volume = tmp_path / "volume"
    if not _mount_tmpfs(volume, "64k"):
        # a container without CAP_SYS_ADMIN; /dev/full above still covers the failing write
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        filler = volume / "filler"
        runtime, xks = await _audited_client(
            software_deployment, aiohttp_client, str(volume / "audit.log")
        )
        for _ in range(3):  # the log's last page is partly used: a later line may be cut short
            await xks.call("encrypt", KEY_BOTH, encrypt_body(SECRET))
        with contextlib.suppress(OSError), filler.open("wb", buffering=0) as out:
            while True:  # fill the volume up to its last byte
                out.write(b"f" * 512)
        for _ in range(12):
            await xks.call("encrypt", KEY_BOTH, encrypt_body(SECRET))
        failed = _failures(runtime)
        assert failed >= 1
        filler.unlink()
        for _ in range(3):
            await xks.call("encrypt", KEY_BOTH, encrypt_body(SECRET))
        assert _failures(runtime) == failed
        lines = [line for line in (volume / "audit.log").read_bytes().split(b"\n") if line]
        # a line cut short by the full volume stays on a line of its own
        assert all(line.count(b'{"time"') == 1 for line in lines), lines
        whole = [json.loads(line) for line in lines if line.endswith(b"}")]
        assert len(whole) >= 3 + 3 and all(r["outcome"] == "success" for r in whole)
    finally:
        subprocess.run(["umount", "-l", str(volume)], check=False)


def test_on_failure_accepts_only_continue_or_refuse(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path)
    path = deployment.config_path
    text = path.read_text()
    assert "[audit]\n" in text
    path.write_text(text.replace("[audit]\n", '[audit]\non_failure = "refuse"\n'))
    assert load_config(path).audit.on_failure == "refuse"
    path.write_text(text.replace("[audit]\n", '[audit]\non_failure = "ignore"\n'))
    with pytest.raises(ConfigError, match=r"audit\.on_failure: must be one of continue, refuse"):
        load_config(path)
    path.write_text(text)
    assert load_config(path).audit.on_failure == "continue"
