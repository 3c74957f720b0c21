"""Issue 9, findings 2 and 8, over real HTTP: each class of malformed input gets the spec's JSON.

Requests are written byte by byte on a raw socket, because the classes include what an HTTP
client library refuses to send (repeated authentication headers, bytes that are not UTF-8).
Each starts from a request that the proxy accepts, so the one change made is what is refused.
Botocore- and curl-signed requests keep passing (tests/test_api.py, ``*_against_live_server``).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import KEY_BOTH, Deployment
from tests.proxy_process import XKS_PROXY
from tests.xks_client import HEALTH_BODY, XksClient, encrypt_body
from xks_proxy.runtime import ProxyRuntime
from xks_proxy.web.app import create_app

Headers = list[tuple[bytes, bytes]]
PRINTABLE = set(range(0x20, 0x7F))


@pytest.fixture
async def xks(
    software_deployment: Deployment,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> XksClient:
    runtime = ProxyRuntime(software_deployment.config)
    client = await aiohttp_client(create_app(runtime))
    store = runtime.config.key_stores[0]
    return XksClient(client, store.uri_path, store.region, store.credentials[0])


async def _post(xks: XksClient, path: str, headers: Headers, body: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request exactly as given; the status and body of the answer."""
    reader, writer = await asyncio.open_connection(xks.client.host, xks.client.port)
    try:
        head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        writer.write(
            b"POST " + path.encode() + b" HTTP/1.1\r\n" + head
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n"
            + b"Connection: close\r\n\r\n" + body
        )  # fmt: skip
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), payload


def _signed(xks: XksClient, path: str, body: bytes) -> Headers:
    return [(k.encode(), v.encode()) for k, v in xks.signed_headers(path, body).items()]


def _edit(headers: Headers, name: bytes, change: Callable[[bytes], bytes]) -> Headers:
    return [(n, change(v) if n.lower() == name.lower() else v) for n, v in headers]


def _repeat(name: bytes) -> Callable[[Headers], Headers]:
    return lambda h: h + [(n, v) for n, v in h if n.lower() == name.lower()]


def _in_authorization(old: bytes, new: bytes) -> Callable[[Headers], Headers]:
    return lambda h: _edit(h, b"Authorization", lambda v: v.replace(old, new, 1))


def _authorization_plus(text: bytes) -> Callable[[Headers], Headers]:
    return lambda h: _edit(h, b"Authorization", lambda v: v + text)


def _date(value: bytes) -> Callable[[Headers], Headers]:
    return lambda h: _edit(h, b"X-Amz-Date", lambda v: value)


def _full_width(value: bytes) -> bytes:
    return value.decode().translate({ord(d): 0xFF10 + int(d) for d in "0123456789"}).encode()


MALFORMED_AUTHENTICATION: list[tuple[str, Callable[[Headers], Headers]]] = [
    # Finding 2: was a TypeError in compare_digest, a 500 InternalException.
    ("non-ASCII after Signature", _authorization_plus("é".encode())),
    ("byte 0xff after Signature", _authorization_plus(b"\xff")),
    ("uppercase Signature", lambda h: _edit(h, b"Authorization", _upper_signature)),
    ("Signature 63 digits", lambda h: _edit(h, b"Authorization", lambda v: v[:-1])),
    ("non-ASCII in Credential", _in_authorization(b"Credential=", "Credential=é".encode())),
    ("empty Authorization", lambda h: _edit(h, b"Authorization", lambda v: b"")),
    # Finding 8.
    ("Authorization twice", _repeat(b"Authorization")),
    ("X-Amz-Date twice", _repeat(b"X-Amz-Date")),
    (
        "Signature field twice",
        _in_authorization(b"Signature=", b"Signature=" + b"0" * 64 + b", Signature="),
    ),
    (
        "Credential field twice",
        _in_authorization(b"SignedHeaders=", b"Credential=A/b, SignedHeaders="),
    ),
    (
        "SignedHeaders field twice",
        _in_authorization(b"Signature=", b"SignedHeaders=host, Signature="),
    ),
    ("unknown Authorization field", _authorization_plus(b", Extra=1")),
    ("SignedHeaders unsorted", _in_authorization(b"=host;x-amz-date", b"=x-amz-date;host")),
    ("SignedHeaders repeated", _in_authorization(b"=host;", b"=host;host;")),
    ("full-width digits in X-Amz-Date", lambda h: _edit(h, b"X-Amz-Date", _full_width)),
    ("byte 0xff in X-Amz-Date", _date(b"20221110T12000\xffZ")),
    ("X-Amz-Date not a calendar date", _date(b"20221340T120000Z")),
]


def _upper_signature(value: bytes) -> bytes:
    head, _, signature = value.rpartition(b"=")
    return head + b"=" + signature.upper()


def _assert_error(status: int, payload: bytes, expected: int, name: str) -> None:
    error = json.loads(payload)
    assert (status, error["errorName"]) == (expected, name), error
    assert set(error["errorMessage"].encode()) <= PRINTABLE


async def test_the_unchanged_request_is_accepted(xks: XksClient) -> None:
    path, body = xks.path("health"), json.dumps(HEALTH_BODY).encode()
    status, payload = await _post(xks, path, _signed(xks, path, body), body)
    assert status == 200, payload


@pytest.mark.parametrize(
    ("name", "change"), MALFORMED_AUTHENTICATION, ids=[c[0] for c in MALFORMED_AUTHENTICATION]
)
async def test_malformed_authentication_is_401_json(
    xks: XksClient, name: str, change: Callable[[Headers], Headers]
) -> None:
    path, body = xks.path("health"), json.dumps(HEALTH_BODY).encode()
    headers = _signed(xks, path, body)
    assert change(headers) != headers, "the change must apply to what the client signs"
    status, payload = await _post(xks, path, change(headers), body)
    _assert_error(status, payload, 401, "AuthenticationFailedException")


def _encrypt_text(**fields: Any) -> str:
    return json.dumps({**encrypt_body(b"hello", cdiv=False), **fields})


def _named_twice(name: str) -> bytes:
    text = _encrypt_text()
    return text.replace(f'"{name}"', f'"{name}": "QUJD", "{name}"', 1).encode()


MALFORMED_BODIES: list[tuple[str, bytes]] = [
    ("non-zero pad bits QUJ=", _encrypt_text(plaintext="QUJ=").encode()),
    ("extra padding QUJD====", _encrypt_text(plaintext="QUJD====").encode()),
    ("one pad too many QUJD=", _encrypt_text(plaintext="QUJD=").encode()),
    ("AAD with pad bits", _encrypt_text(additionalAuthenticatedData="QUK=").encode()),
    ("plaintext named twice", _named_twice("plaintext")),
    ("requestMetadata named twice", _named_twice("requestMetadata")),
    ("kmsRequestId named twice", _named_twice("kmsRequestId")),
    ("nested past the parser's depth", b'{"a":' + b"[" * 1010 + b"]" * 1010 + b"}"),
]


@pytest.mark.parametrize(("name", "body"), MALFORMED_BODIES, ids=[c[0] for c in MALFORMED_BODIES])
async def test_malformed_bodies_are_400_json(xks: XksClient, name: str, body: bytes) -> None:
    path = xks.path("encrypt", KEY_BOTH)
    status, payload = await _post(xks, path, _signed(xks, path, body), body)
    _assert_error(status, payload, 400, "ValidationException")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [XKS_PROXY, *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("key_id", [".", ".."])
def test_cli_refuses_key_ids_clients_cannot_reach(tmp_path: Path, key_id: str) -> None:
    made = _cli(
        "init", str(tmp_path / "dep"), "--port", "0", "--metrics-port", "0", "--admin-port", "0"
    )
    assert made.returncode == 0, made.stderr
    config = str(tmp_path / "dep" / "xks-proxy.toml")
    created = _cli("keys", "create", "--config", config, "--key-id", key_id)
    assert created.returncode == 2, created.stdout
    assert f"--key-id: key id {key_id!r} could never be reached" in created.stderr
    refused_init = _cli("init", str(tmp_path / "other"), "--key-id", key_id)
    assert refused_init.returncode == 2 and "could never be reached" in refused_init.stderr
    listed = _cli("keys", "list", "--config", config, "--json")
    assert key_id not in [k["keyId"] for k in json.loads(listed.stdout)]


@pytest.mark.parametrize("name", ["..", "a.b"])
def test_init_refuses_a_name_whose_uri_path_would_not_load(tmp_path: Path, name: str) -> None:
    # Key store names may hold dots; URI paths may not (and "/../" is unreachable anyway).
    made = _cli("init", str(tmp_path / "dep"), "--name", name)
    assert made.returncode == 2, made.stdout
    assert f"--name: '/keystores/{name}/kms/xks/v1'" in made.stderr
    assert not (tmp_path / "dep").exists()
