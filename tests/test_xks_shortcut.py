"""The XKS listener's shortcut past aiohttp's router (web/app.py ``xks_shortcut``) answers
exactly as the router does, against the real ``xks-proxy serve``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_deployment
from tests.proxy_process import ProxyProcess, close_all, open_socket
from tests.test_transport import HEALTH_PATH, _raw_request, _read_response, credential
from tests.xks_client import HEALTH_BODY


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    close_all()


def _answer(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    sock = open_socket(port)
    sock.sendall(raw)
    return _read_response(sock)


def test_routing_is_unchanged_by_the_shortcut(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path)
    with ProxyProcess(deployment.config_path) as proxy:
        signed = _raw_request(proxy.port, HEALTH_PATH, HEALTH_BODY, credential(deployment))
        status, _, body = _answer(proxy.port, signed)
        assert status == 200 and json.loads(body)["ekmFleetDetails"]
        # POST /ping: the router passes it to the endpoint (/ping takes GET and HEAD): 404
        status, _, body = _answer(proxy.port, b"POST /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, json.loads(body)["errorName"]) == (404, "InvalidUriPathException")
        assert _answer(proxy.port, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200
        # GET on an API path reaches the endpoint through the router: 405 with Allow: POST
        status, headers, body = _answer(
            proxy.port, f"GET {HEALTH_PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        assert (status, headers["allow"]) == (405, "POST")
        assert json.loads(body)["errorName"] == "UnsupportedOperationException"
        # an unknown path: 404 InvalidUriPathException either way
        status, _, body = _answer(proxy.port, b"POST /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, json.loads(body)["errorName"]) == (404, "InvalidUriPathException")


def test_expect_100_continue_is_answered_before_the_body(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path)
    with ProxyProcess(deployment.config_path) as proxy:
        signed = _raw_request(proxy.port, HEALTH_PATH, HEALTH_BODY, credential(deployment))
        head, _, body = signed.partition(b"\r\n\r\n")
        sock = open_socket(proxy.port)
        sock.sendall(head + b"\r\nExpect: 100-continue\r\n\r\n")
        interim = b""
        while b"\r\n\r\n" not in interim:
            chunk = sock.recv(4096)
            assert chunk, "closed before 100 Continue"
            interim += chunk
        assert interim.startswith(b"HTTP/1.1 100")
        sock.sendall(body)
        status, _, answer = _read_response(sock)
        assert status == 200 and json.loads(answer)["ekmFleetDetails"]
