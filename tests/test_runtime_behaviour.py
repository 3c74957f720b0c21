"""Behaviour of a running proxy over time: key changes, rotation, credentials, metrics, audit."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import KEY_BOTH, Deployment, software_database
from tests.xks_client import HEALTH_BODY, XksClient, decrypt_body, encrypt_body, unb64
from xks_proxy.aad import CiphertextMetadata
from xks_proxy.config import load_config
from xks_proxy.credentials import CredentialsFile, generate_credential
from xks_proxy.keystore.store import KeyDatabase
from xks_proxy.runtime import ProxyRuntime
from xks_proxy.web.app import create_app, create_metrics_app

SECRET_PLAINTEXT = b"TOP-SECRET-PLAINTEXT-0123456789"


def _database(deployment: Deployment) -> KeyDatabase:
    return software_database(deployment.config)


async def _eventually(check: Any, timeout: float = 5.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result or asyncio.get_running_loop().time() > deadline:
            return result
        await asyncio.sleep(0.1)


async def _client_for(deployment: Deployment, aiohttp_client: Any) -> XksClient:
    store = deployment.config.key_stores[0]
    client = await aiohttp_client(create_app(ProxyRuntime(deployment.config)))
    return XksClient(client, store.uri_path, store.region, store.credentials[0])


async def test_disable_and_enable_take_effect_while_running(
    software_deployment: Deployment, aiohttp_client: Any
) -> None:
    deployment = software_deployment
    xks = await _client_for(deployment, aiohttp_client)
    encrypted = await xks.call("encrypt", KEY_BOTH, encrypt_body(b"data"))
    database = _database(deployment)
    database.set_enabled(KEY_BOTH, False)

    async def disabled() -> bool:
        response = await xks.post("encrypt", KEY_BOTH, encrypt_body(b"data"))
        return response.status == 400 and (await response.json())["errorName"] == (
            "InvalidStateException"
        )

    assert await _eventually(disabled)
    metadata = await xks.call(
        "metadata",
        KEY_BOTH,
        {
            "requestMetadata": {
                "awsPrincipalArn": "p",
                "kmsOperation": "CreateKey",
                "kmsRequestId": "r",
            }
        },
    )
    assert metadata["keyStatus"] == "DISABLED"
    error = await xks.call("decrypt", KEY_BOTH, decrypt_body(encrypted), expect=400)
    assert error["errorName"] == "InvalidStateException"
    database.set_enabled(KEY_BOTH, True)

    async def enabled() -> bool:
        return (await xks.post("decrypt", KEY_BOTH, decrypt_body(encrypted))).status == 200

    assert await _eventually(enabled)
    database.close()


async def test_rotation_keeps_old_ciphertexts_decryptable(
    software_deployment: Deployment, aiohttp_client: Any
) -> None:
    deployment = software_deployment
    xks = await _client_for(deployment, aiohttp_client)
    old = await xks.call("encrypt", KEY_BOTH, encrypt_body(b"before rotation", b"ctx"))
    assert CiphertextMetadata.decode(unb64(old["ciphertextMetadata"])).key_version == 1
    database = _database(deployment)
    assert database.rotate_key(KEY_BOTH) == 2
    database.close()

    async def rotated() -> dict[str, Any] | None:
        new = await xks.call("encrypt", KEY_BOTH, encrypt_body(b"after rotation", b"ctx"))
        version = CiphertextMetadata.decode(unb64(new["ciphertextMetadata"])).key_version
        return new if version == 2 else None

    new = await _eventually(rotated)
    assert new is not None
    for encrypted, plaintext in ((old, b"before rotation"), (new, b"after rotation")):
        decrypted = await xks.call("decrypt", KEY_BOTH, decrypt_body(encrypted, b"ctx"))
        assert unb64(decrypted["plaintext"]) == plaintext


async def test_two_credentials_are_live_at_once(
    deployment: Deployment, aiohttp_client: Any
) -> None:
    store = deployment.config.key_stores[0]
    CredentialsFile(deployment.directory / "credentials.json").add(
        store.name, generate_credential()
    )
    config = load_config(deployment.config_path)
    credentials = config.key_stores[0].credentials
    assert len(credentials) == 2
    client = await aiohttp_client(create_app(ProxyRuntime(config)))
    for credential in credentials:
        xks = XksClient(client, store.uri_path, store.region, credential)
        assert (await xks.call("health", None, HEALTH_BODY))["ekmFleetDetails"]


async def test_metrics_are_scraped_and_parse(
    runtime_client: tuple[ProxyRuntime, TestClient[Any, Any]], xks: XksClient, aiohttp_client: Any
) -> None:
    runtime, _ = runtime_client
    await xks.call("encrypt", KEY_BOTH, encrypt_body(SECRET_PLAINTEXT))
    await xks.call("encrypt", "key-missing", encrypt_body(SECRET_PLAINTEXT), expect=404)
    await xks.call("health", None, HEALTH_BODY)
    metrics_client = await aiohttp_client(create_metrics_app(runtime.metrics.registry))
    response = await metrics_client.get("/metrics")
    assert response.status == 200
    text = await response.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    counts = {
        (s.labels["operation"], s.labels["outcome"]): s.value
        for s in families["xks_request_duration_seconds"].samples
        if s.name.endswith("_count")
    }
    assert counts[("Encrypt", "success")] == 1
    assert counts[("Encrypt", "KeyNotFoundException")] == 1
    assert counts[("GetHealthStatus", "success")] == 1
    buckets = {
        s.labels["le"]
        for s in families["xks_request_duration_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert {"0.001", "0.25", "+Inf"} <= buckets
    errors = [s for s in families["xks_errors"].samples if s.name == "xks_errors_total"]
    assert [(e.labels["error_name"], e.labels["error_type"], e.value) for e in errors] == [
        ("KeyNotFoundException", "non_retryable", 1.0)
    ]
    backend_calls = {
        s.labels["call"] for s in families["xks_backend_call_duration_seconds"].samples
    }
    assert {"describe_key", "encrypt", "verify_decrypt"} <= backend_calls
    states = {
        s.labels["state"]: s.value
        for s in families["xks_ekm_health_state"].samples
        if s.labels["backend"] == runtime.config.key_stores[0].backend
    }
    assert states == {"ACTIVE": 1.0, "DEGRADED": 0.0, "UNAVAILABLE": 0.0}
    assert families["xks_requests_in_flight"].samples[0].value == 0
    assert SECRET_PLAINTEXT.decode() not in text


async def test_audit_log_records_requests_and_no_plaintext(
    xks: XksClient, deployment: Deployment, caplog: Any
) -> None:
    aad = b"AAD-VALUE-NOT-FOR-LOGS"
    encrypted = await xks.call("encrypt", KEY_BOTH, encrypt_body(SECRET_PLAINTEXT, aad))
    await xks.call("decrypt", KEY_BOTH, decrypt_body(encrypted, aad))
    tampered = decrypt_body(encrypted, b"wrong aad")
    await xks.call("decrypt", KEY_BOTH, tampered, expect=400)
    await xks.call("health", None, HEALTH_BODY)
    audit_path = Path(deployment.config.audit.path)
    raw = audit_path.read_bytes()
    lines = [json.loads(line) for line in raw.splitlines()]
    assert [(r["xksOperation"], r["outcome"], r["status"]) for r in lines] == [
        ("Encrypt", "success", 200),
        ("Decrypt", "success", 200),
        ("Decrypt", "InvalidCiphertextException", 400),
        ("GetHealthStatus", "success", 200),
    ]
    first = lines[0]
    assert first["kmsRequestId"] == "4112f4d6-db54-4af4-ae30-c55a22a8dfae"
    assert first["kmsOperation"] == "Encrypt"
    assert first["keyStore"] == "dev" and first["keyId"] == KEY_BOTH
    assert first["awsPrincipalArn"].startswith("arn:aws:iam::")
    assert first["kmsKeyArn"].startswith("arn:aws:kms:")
    assert first["accessKeyId"] == xks.credential.access_key_id
    assert first["latencyMs"] > 0
    everything = raw + caplog.text.encode()
    for secret in (
        SECRET_PLAINTEXT,
        encrypt_body(SECRET_PLAINTEXT)["plaintext"].encode(),
        aad,
        xks.credential.secret_access_key.encode(),
        encrypted["ciphertext"].encode(),
    ):
        assert secret not in everything


async def test_health_key_is_not_reachable_through_the_api(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    from xks_proxy.keystore.store import HEALTH_KEY_ID
    from xks_proxy.scaffold import scaffold

    made = scaffold(tmp_path, port=0, metrics_port=0, admin_port=0)
    config = load_config(made.config_path)
    assert config.key_stores[0].key_patterns == ("*",)
    store = config.key_stores[0]
    client = await aiohttp_client(create_app(ProxyRuntime(config)))
    xks = XksClient(client, store.uri_path, store.region, store.credentials[0])
    for operation in ("metadata", "encrypt"):
        body = (
            encrypt_body(b"x")
            if operation == "encrypt"
            else {
                "requestMetadata": {
                    "awsPrincipalArn": "p",
                    "kmsOperation": "CreateKey",
                    "kmsRequestId": "r",
                }
            }
        )
        error = await xks.call(operation, HEALTH_KEY_ID, body, expect=404)
        assert error["errorName"] == "KeyNotFoundException"
    assert (
        await xks.call(
            "metadata",
            made.key_id,
            {
                "requestMetadata": {
                    "awsPrincipalArn": "p",
                    "kmsOperation": "CreateKey",
                    "kmsRequestId": "r",
                }
            },
        )
    )["keySpec"]
