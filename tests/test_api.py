"""The four XKS APIs over real HTTP on loopback: round trips, tampering and every error path."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    KEY_BOTH,
    KEY_DECRYPT_ONLY,
    KEY_DISABLED,
    KEY_ENCRYPT_ONLY,
    KEY_NO_USAGE,
    KEY_OUTSIDE_STORE,
)
from tests.xks_client import (
    HEALTH_BODY,
    METADATA_BODY,
    XksClient,
    b64,
    decrypt_body,
    encrypt_body,
    unb64,
)
from xks_proxy import sigv4
from xks_proxy.aad import cdiv

PRINTABLE = set(range(0x20, 0x7F))


def _compact(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


async def test_health_reports_active_fleet(xks: XksClient) -> None:
    health = await xks.call("health", None, HEALTH_BODY)
    assert health["xksProxyFleetSize"] == 1
    assert health["xksProxyVendor"] and health["xksProxyModel"] and health["ekmVendor"]
    assert [e["healthStatus"] for e in health["ekmFleetDetails"]] == ["ACTIVE"]


@pytest.mark.parametrize(
    ("key_id", "usage", "status"),
    [
        (KEY_BOTH, ["DECRYPT", "ENCRYPT"], "ENABLED"),
        (KEY_ENCRYPT_ONLY, ["ENCRYPT"], "ENABLED"),
        (KEY_DECRYPT_ONLY, ["DECRYPT"], "ENABLED"),
        (KEY_NO_USAGE, [], "ENABLED"),
        (KEY_DISABLED, ["DECRYPT", "ENCRYPT"], "DISABLED"),
    ],
)
async def test_key_metadata(xks: XksClient, key_id: str, usage: list[str], status: str) -> None:
    metadata = await xks.call("metadata", key_id, METADATA_BODY)
    assert metadata == {"keySpec": "AES_256", "keyUsage": usage, "keyStatus": status}


@pytest.mark.parametrize(
    ("plaintext_size", "aad_size"),
    [(0, None), (12, None), (12, 0), (4300, 8192), (16 * 1024, 20_000)],
    ids=["empty", "no-aad", "empty-aad", "spec-minimums", "beyond-minimums"],
)
async def test_round_trip(xks: XksClient, plaintext_size: int, aad_size: int | None) -> None:
    plaintext = bytes(range(256)) * (plaintext_size // 256) + b"p" * (plaintext_size % 256)
    aad = None if aad_size is None else b"a" * aad_size
    encrypted = await xks.call("encrypt", KEY_BOTH, encrypt_body(plaintext, aad))
    assert len(unb64(encrypted["ciphertext"])) == len(plaintext)
    assert len(unb64(encrypted["initializationVector"])) == 12
    assert len(unb64(encrypted["authenticationTag"])) == 16
    assert len(unb64(encrypted["ciphertextMetadata"])) <= 20
    expected_cdiv = cdiv(
        aad,
        unb64(encrypted["ciphertextMetadata"]),
        unb64(encrypted["initializationVector"]),
        unb64(encrypted["ciphertext"]),
        unb64(encrypted["authenticationTag"]),
    )
    assert unb64(encrypted["ciphertextDataIntegrityValue"]) == expected_cdiv
    decrypted = await xks.call("decrypt", KEY_BOTH, decrypt_body(encrypted, aad))
    assert unb64(decrypted["plaintext"]) == plaintext


async def test_cdiv_only_when_asked(xks: XksClient) -> None:
    encrypted = await xks.call("encrypt", KEY_BOTH, encrypt_body(b"x", cdiv=False))
    assert "ciphertextDataIntegrityValue" not in encrypted


@pytest.mark.parametrize("aad", [None, b"ctx"], ids=["no-aad", "aad"])
async def test_cdiv_needs_a_key_that_may_decrypt(xks: XksClient, aad: bytes | None) -> None:
    # xks-spec §5.3: a CDIV promises the ciphertext decrypts, which an encrypt-only key cannot
    # prove (issue 9, finding 9). Without a CDIV request the key encrypts as usual.
    error = await xks.call("encrypt", KEY_ENCRYPT_ONLY, encrypt_body(b"x", aad), expect=400)
    assert error["errorName"] == "InvalidKeyUsageException"
    encrypted = await xks.call("encrypt", KEY_ENCRYPT_ONLY, encrypt_body(b"x", aad, cdiv=False))
    assert "ciphertextDataIntegrityValue" not in encrypted and encrypted["ciphertext"]


def _flip(text: str) -> str:
    data = bytearray(unb64(text))
    data[0] ^= 0x01
    return b64(bytes(data))


TAMPERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "ciphertext": lambda body: body.update(ciphertext=_flip(body["ciphertext"])),
    "tag": lambda body: body.update(authenticationTag=_flip(body["authenticationTag"])),
    "iv": lambda body: body.update(initializationVector=_flip(body["initializationVector"])),
    "aad": lambda body: body.update(
        additionalAuthenticatedData=_flip(body["additionalAuthenticatedData"])
    ),
    "aad-missing": lambda body: body.pop("additionalAuthenticatedData"),
    "metadata": lambda body: body.update(ciphertextMetadata=_flip(body["ciphertextMetadata"])),
    "metadata-last-byte": lambda body: body.update(
        ciphertextMetadata=b64(unb64(body["ciphertextMetadata"])[:-1] + b"\x02")
    ),
    "metadata-missing": lambda body: body.pop("ciphertextMetadata"),
    "metadata-as-aad": lambda body: body.update(
        additionalAuthenticatedData=body.pop("ciphertextMetadata")
    ),
}


@pytest.mark.parametrize("tamper", list(TAMPERS))
async def test_tampered_ciphertext_is_invalid(xks: XksClient, tamper: str) -> None:
    aad = b"project=nile,department=marketing"
    encrypted = await xks.call("encrypt", KEY_BOTH, encrypt_body(b"secret data", aad))
    body = decrypt_body(encrypted, aad)
    TAMPERS[tamper](body)
    error = await xks.call("decrypt", KEY_BOTH, body, expect=400)
    assert error["errorName"] == "InvalidCiphertextException"


def _health_ok() -> dict[str, Any]:
    return json.loads(json.dumps(HEALTH_BODY))  # type: ignore[no-any-return]


def _encrypt_ok() -> dict[str, Any]:
    return encrypt_body(b"hello", b"aad")


def _decrypt_ok() -> dict[str, Any]:
    return {
        **decrypt_body(
            {
                "ciphertext": b64(b"hello"),
                "initializationVector": b64(b"i" * 12),
                "authenticationTag": b64(b"t" * 16),
                "ciphertextMetadata": b64(b"\x01\x01\x00\x00\x00\x01"),
            },
            b"aad",
        )
    }


def _metadata_ok() -> dict[str, Any]:
    return json.loads(json.dumps(METADATA_BODY))  # type: ignore[no-any-return]


BODIES = {
    "health": _health_ok,
    "metadata": _metadata_ok,
    "encrypt": _encrypt_ok,
    "decrypt": _decrypt_ok,
}


def _changed(operation: str, change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    body = BODIES[operation]()
    change(body)
    return body


def _meta(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda body: body["requestMetadata"].update(fields)


# (operation, key id, body or None for the valid one, raw body bytes, status, errorName)
ERROR_CASES: list[tuple[str, str, str | None, Any, int, str]] = []
for op in BODIES:
    key = None if op == "health" else KEY_BOTH
    ERROR_CASES += [
        (f"{op}: malformed JSON", op, key, b'{"requestMetadata": ', 400, "ValidationException"),
        (f"{op}: JSON array", op, key, b"[]", 400, "ValidationException"),
        (f"{op}: empty object", op, key, {}, 400, "ValidationException"),
        (
            f"{op}: empty requestMetadata",
            op,
            key,
            _changed(op, lambda b: b.update(requestMetadata={})),
            400,
            "ValidationException",
        ),
        (
            f"{op}: requestMetadata a string",
            op,
            key,
            _changed(op, lambda b: b.update(requestMetadata="x")),
            400,
            "ValidationException",
        ),
        (
            f"{op}: no kmsRequestId",
            op,
            key,
            _changed(op, lambda b: b["requestMetadata"].pop("kmsRequestId")),
            400,
            "ValidationException",
        ),
        (
            f"{op}: numeric kmsOperation",
            op,
            key,
            _changed(op, _meta(kmsOperation=7)),
            400,
            "ValidationException",
        ),
        (f"{op}: not UTF-8", op, key, b'{"requestMetadata": "\xff"}', 400, "ValidationException"),
    ]
for op in ("metadata", "encrypt", "decrypt"):
    ERROR_CASES += [
        (
            f"{op}: no awsPrincipalArn",
            op,
            KEY_BOTH,
            _changed(op, lambda b: b["requestMetadata"].pop("awsPrincipalArn")),
            400,
            "ValidationException",
        ),
        (f"{op}: bad key id chars", op, "bad!key", BODIES[op](), 400, "ValidationException"),
        (f"{op}: key id too long", op, "k" * 129, BODIES[op](), 400, "ValidationException"),
        (f"{op}: unknown key", op, "key-missing", BODIES[op](), 404, "KeyNotFoundException"),
        (
            f"{op}: key outside the store",
            op,
            KEY_OUTSIDE_STORE,
            BODIES[op](),
            404,
            "KeyNotFoundException",
        ),
    ]
for op in ("encrypt", "decrypt"):
    ERROR_CASES += [
        (
            f"{op}: no kmsKeyArn",
            op,
            KEY_BOTH,
            _changed(op, lambda b: b["requestMetadata"].pop("kmsKeyArn")),
            400,
            "ValidationException",
        ),
        (
            f"{op}: algorithm AES_CBC",
            op,
            KEY_BOTH,
            _changed(op, lambda b: b.update(encryptionAlgorithm="AES_CBC")),
            400,
            "ValidationException",
        ),
        (
            f"{op}: no algorithm",
            op,
            KEY_BOTH,
            _changed(op, lambda b: b.pop("encryptionAlgorithm")),
            400,
            "ValidationException",
        ),
        (
            f"{op}: AAD not Base64",
            op,
            KEY_BOTH,
            _changed(op, lambda b: b.update(additionalAuthenticatedData="***")),
            400,
            "ValidationException",
        ),
        (
            f"{op}: AAD URL-safe Base64",
            op,
            KEY_BOTH,
            _changed(op, lambda b: b.update(additionalAuthenticatedData="-_-_")),
            400,
            "ValidationException",
        ),
        (
            f"{op}: AAD unpadded",
            op,
            KEY_BOTH,
            _changed(op, lambda b: b.update(additionalAuthenticatedData="YWE")),
            400,
            "ValidationException",
        ),
        (f"{op}: disabled key", op, KEY_DISABLED, BODIES[op](), 400, "InvalidStateException"),
        (
            f"{op}: key without usage",
            op,
            KEY_NO_USAGE,
            BODIES[op](),
            400,
            "InvalidKeyUsageException",
        ),
    ]
ERROR_CASES += [
    (
        "encrypt: no plaintext",
        "encrypt",
        KEY_BOTH,
        _changed("encrypt", lambda b: b.pop("plaintext")),
        400,
        "ValidationException",
    ),
    (
        "encrypt: plaintext a number",
        "encrypt",
        KEY_BOTH,
        _changed("encrypt", lambda b: b.update(plaintext=5)),
        400,
        "ValidationException",
    ),
    (
        "encrypt: plaintext not Base64",
        "encrypt",
        KEY_BOTH,
        _changed("encrypt", lambda b: b.update(plaintext="not base64!")),
        400,
        "ValidationException",
    ),
    (
        "encrypt: CDIV algorithm MD5",
        "encrypt",
        KEY_BOTH,
        _changed("encrypt", lambda b: b.update(ciphertextDataIntegrityValueAlgorithm="MD5")),
        400,
        "ValidationException",
    ),
    (
        "encrypt: decrypt-only key",
        "encrypt",
        KEY_DECRYPT_ONLY,
        _encrypt_ok(),
        400,
        "InvalidKeyUsageException",
    ),
    (
        "decrypt: encrypt-only key",
        "decrypt",
        KEY_ENCRYPT_ONLY,
        _decrypt_ok(),
        400,
        "InvalidKeyUsageException",
    ),
    (
        "decrypt: no ciphertext",
        "decrypt",
        KEY_BOTH,
        _changed("decrypt", lambda b: b.pop("ciphertext")),
        400,
        "ValidationException",
    ),
    (
        "decrypt: no IV",
        "decrypt",
        KEY_BOTH,
        _changed("decrypt", lambda b: b.pop("initializationVector")),
        400,
        "ValidationException",
    ),
    (
        "decrypt: 11-byte IV",
        "decrypt",
        KEY_BOTH,
        _changed("decrypt", lambda b: b.update(initializationVector=b64(b"i" * 11))),
        400,
        "ValidationException",
    ),
    (
        "decrypt: 13-byte IV",
        "decrypt",
        KEY_BOTH,
        _changed("decrypt", lambda b: b.update(initializationVector=b64(b"i" * 13))),
        400,
        "ValidationException",
    ),
    (
        "decrypt: 15-byte tag",
        "decrypt",
        KEY_BOTH,
        _changed("decrypt", lambda b: b.update(authenticationTag=b64(b"t" * 15))),
        400,
        "ValidationException",
    ),
    (
        "decrypt: no tag",
        "decrypt",
        KEY_BOTH,
        _changed("decrypt", lambda b: b.pop("authenticationTag")),
        400,
        "ValidationException",
    ),
    (
        "decrypt: 21-byte metadata",
        "decrypt",
        KEY_BOTH,
        _changed("decrypt", lambda b: b.update(ciphertextMetadata=b64(b"m" * 21))),
        400,
        "ValidationException",
    ),
    (
        "decrypt: 16-byte IV, forged",
        "decrypt",
        KEY_BOTH,
        _changed("decrypt", lambda b: b.update(initializationVector=b64(b"i" * 16))),
        400,
        "InvalidCiphertextException",
    ),
    (
        "decrypt: forged ciphertext",
        "decrypt",
        KEY_BOTH,
        _decrypt_ok(),
        400,
        "InvalidCiphertextException",
    ),
]


def _assert_error_body(raw: bytes, status: int, actual: int, name: str) -> None:
    error = json.loads(raw)
    assert raw == _compact(error), "error bodies are compact single-line JSON"
    assert (actual, error["errorName"]) == (status, name), error
    message = error["errorMessage"].encode()
    assert len(message) < 512 and set(message) <= PRINTABLE


@pytest.mark.parametrize(
    ("operation", "key_id", "body", "status", "error_name"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
async def test_error_paths(
    xks: XksClient, operation: str, key_id: str | None, body: Any, status: int, error_name: str
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await xks.post_raw(xks.path(operation, key_id), raw)
    _assert_error_body(await response.read(), status, response.status, error_name)


OTHER_CREDENTIAL = sigv4.Credential("BKIAI2SFODNN7EXAMPLEBKIAI2", "x" * 44)


@pytest.mark.parametrize(
    ("name", "sign_options"),
    [
        ("unknown access key id", lambda: {"credential": OTHER_CREDENTIAL}),
        ("wrong region", lambda: {"region": "eu-west-1"}),
        # Clock skews are taken when the request is signed, not when the tests are collected.
        ("six minutes late", lambda: {"now": datetime.now(UTC) - timedelta(minutes=6)}),
        ("six minutes early", lambda: {"now": datetime.now(UTC) + timedelta(minutes=6)}),
    ],
)
async def test_authentication_failures(
    xks: XksClient, name: str, sign_options: Callable[[], dict[str, Any]]
) -> None:
    for operation, key_id in (("health", None), ("encrypt", KEY_BOTH)):
        body = json.dumps(BODIES[operation]()).encode()
        response = await xks.post_raw(xks.path(operation, key_id), body, **sign_options())
        _assert_error_body(
            await response.read(), 401, response.status, "AuthenticationFailedException"
        )


async def test_unsigned_request_is_rejected(xks: XksClient) -> None:
    response = await xks.client.post(xks.path("health"), data=json.dumps(HEALTH_BODY))
    _assert_error_body(await response.read(), 401, response.status, "AuthenticationFailedException")


async def test_signed_for_other_body_is_rejected(xks: XksClient) -> None:
    path = xks.path("health")
    headers = xks.signed_headers(path, json.dumps(HEALTH_BODY).encode())
    response = await xks.client.post(path, data=b'{"requestMetadata":{}}', headers=headers)
    _assert_error_body(await response.read(), 401, response.status, "AuthenticationFailedException")


@pytest.mark.parametrize(
    "path",
    [
        "/keystores/other/kms/xks/v1/health",
        "/kms/xks/v1/health",
        "/keystores/dev/kms/xks/v2/health",
        "/keystores/dev/kms/xks/v1/keys/key-both/sign",
        "/keystores/dev/kms/xks/v1/keys/key-both",
        "/keystores/dev/kms/xks/v1/health/extra",
        "/keystores/dev/kms/xks/v1/key/key-both/encrypt",
        "/",
    ],
)
async def test_unknown_paths_are_404_before_authentication(xks: XksClient, path: str) -> None:
    # Correctly signed for the path it is sent to, and without a signature: both 404.
    for signed in (True, False):
        body = json.dumps(HEALTH_BODY).encode()
        headers = xks.signed_headers(path, body) if signed else {}
        response = await xks.client.post(path, data=body, headers=headers)
        _assert_error_body(await response.read(), 404, response.status, "InvalidUriPathException")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("operation", ["health", "metadata", "encrypt", "decrypt"])
async def test_other_methods_get_405(xks: XksClient, method: str, operation: str) -> None:
    key_id = None if operation == "health" else KEY_BOTH
    response = await xks.client.request(method, xks.path(operation, key_id))
    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    assert (await response.json())["errorName"] == "UnsupportedOperationException"


async def test_ping_needs_no_authentication(xks: XksClient) -> None:
    response = await xks.client.get("/ping")
    assert response.status == 200


async def test_unknown_fields_and_operations_are_tolerated(xks: XksClient) -> None:
    # xks-spec §3.2-3.3 and §12 item 2: unlisted kmsOperation, extra fields, DescribeKey tools.
    metadata = _metadata_ok()
    metadata["requestMetadata"].update(
        kmsOperation="DescribeKey", kmsKeyArn="arn:x", kmsViaService="ebs", SourceIdentity="s"
    )
    metadata["futureField"] = {"nested": [1, 2]}
    assert (await xks.call("metadata", KEY_BOTH, metadata))["keySpec"] == "AES_256"
    body = encrypt_body(b"bulk")
    body["requestMetadata"].update(kmsOperation="BulkEncrypt", kmsRequestId="not-a-uuid at all")
    body["somethingNew"] = True
    encrypted = await xks.call("encrypt", KEY_BOTH, body)
    health = _health_ok()
    health["requestMetadata"]["kmsOperation"] = "SomeFutureHealthCheck"
    assert (await xks.call("health", None, health))["ekmFleetDetails"]
    decrypt = decrypt_body(encrypted)
    decrypt["requestMetadata"]["kmsOperation"] = "BulkDecrypt"
    assert unb64((await xks.call("decrypt", KEY_BOTH, decrypt))["plaintext"]) == b"bulk"


async def test_success_bodies_are_compact_json(xks: XksClient) -> None:
    response = await xks.post("health", None, HEALTH_BODY)
    raw = await response.read()
    assert response.headers["Content-Type"].startswith("application/json")
    assert raw == _compact(json.loads(raw))


async def test_body_over_cap_is_refused_before_it_is_read(xks: XksClient) -> None:
    # Announce 100 MB and send almost nothing: a server that buffered first would wait forever.
    reader, writer = await asyncio.open_connection(xks.client.host, xks.client.port)
    writer.write(
        f"POST {xks.path('encrypt', KEY_BOTH)} HTTP/1.1\r\nHost: {xks.host}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{".encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    assert head.startswith(b"HTTP/1.1 501")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    error = json.loads(await reader.readexactly(length))
    assert error["errorName"] == "UnsupportedOperationException"
    writer.close()


async def test_chunked_body_over_cap_is_refused(xks: XksClient) -> None:
    async def chunks() -> Any:
        for _ in range(100):
            yield b" " * 4096

    response = await xks.client.post(xks.path("encrypt", KEY_BOTH), data=chunks())
    assert response.status == 501
    assert (await response.json())["errorName"] == "UnsupportedOperationException"


async def test_signed_with_botocore_against_live_server(xks: XksClient) -> None:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = f"http://{xks.host}{xks.path('encrypt', KEY_BOTH)}"
    body = json.dumps(encrypt_body(b"from botocore")).encode()
    request = AWSRequest(
        method="POST", url=url, data=body, headers={"Content-Type": "application/json"}
    )
    credentials = Credentials(xks.credential.access_key_id, xks.credential.secret_access_key)
    SigV4Auth(credentials, "kms-xks-proxy", xks.region).add_auth(request)
    headers = dict(request.headers.items())
    response = await xks.client.post(xks.path("encrypt", KEY_BOTH), data=body, headers=headers)
    assert response.status == 200, await response.text()
    encrypted = await response.json()
    plaintext = (await xks.call("decrypt", KEY_BOTH, decrypt_body(encrypted)))["plaintext"]
    assert unb64(plaintext) == b"from botocore"
    # The same botocore signature no longer fits once the body changes.
    response = await xks.client.post(
        xks.path("encrypt", KEY_BOTH), data=body.replace(b"Encrypt", b"Decrypt"), headers=headers
    )
    assert response.status == 401


async def _curl(xks: XksClient, path: str, body: bytes, secret: str) -> tuple[int, dict[str, Any]]:
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "20",
        "--aws-sigv4", f"aws:amz:{xks.region}:kms-xks-proxy",
        "--user", f"{xks.credential.access_key_id}:{secret}",
        "-X", "POST", "-H", "Content-Type:application/json",
        "--data-binary", "@-", "-w", "\n%{http_code}",
        f"http://{xks.host}{path}",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    output, _ = await process.communicate(body)
    assert process.returncode == 0
    text, _, status = output.decode().rpartition("\n")
    return int(status), json.loads(text)


async def test_signed_with_real_curl_against_live_server(xks: XksClient) -> None:
    secret = xks.credential.secret_access_key
    status, health = await _curl(xks, xks.path("health"), json.dumps(HEALTH_BODY).encode(), secret)
    assert status == 200 and health["ekmFleetDetails"][0]["healthStatus"] == "ACTIVE"
    body = json.dumps(encrypt_body(b"from curl", b"ctx")).encode()
    status, encrypted = await _curl(xks, xks.path("encrypt", KEY_BOTH), body, secret)
    assert status == 200
    body = json.dumps(decrypt_body(encrypted, b"ctx")).encode()
    status, decrypted = await _curl(xks, xks.path("decrypt", KEY_BOTH), body, secret)
    assert (status, unb64(decrypted["plaintext"])) == (200, b"from curl")
    status, error = await _curl(xks, xks.path("health"), b"{}", "y" * 44)
    assert (status, error["errorName"]) == (401, "AuthenticationFailedException")


async def test_large_aad_beyond_the_length_prefix_is_unsupported(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    from tests.conftest import make_deployment
    from xks_proxy.runtime import ProxyRuntime
    from xks_proxy.web.app import create_app

    deployment = make_deployment(tmp_path, **{"max_body_bytes = 65536": "max_body_bytes = 262144"})
    runtime = ProxyRuntime(deployment.config)
    store = runtime.config.key_stores[0]
    xks = XksClient(
        await aiohttp_client(create_app(runtime)),
        store.uri_path,
        store.region,
        store.credentials[0],
    )
    accepted = await xks.call("encrypt", KEY_BOTH, encrypt_body(b"x", b"a" * 65535))
    assert accepted["ciphertext"]
    error = await xks.call("encrypt", KEY_BOTH, encrypt_body(b"x", b"a" * 65536), expect=501)
    assert error["errorName"] == "UnsupportedOperationException"
    error = await xks.call("encrypt", "key-missing", encrypt_body(b"x", b"a" * 65536), expect=404)
    assert error["errorName"] == "KeyNotFoundException", "key existence is checked first (§7.4)"


def test_error_case_table_covers_every_api() -> None:
    names = {case[5] for case in ERROR_CASES}
    assert {
        "ValidationException",
        "KeyNotFoundException",
        "InvalidStateException",
        "InvalidKeyUsageException",
        "InvalidCiphertextException",
    } <= names
    assert {case[1] for case in ERROR_CASES} == set(BODIES)
    assert base64  # imported for helpers above
