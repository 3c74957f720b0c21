"""Imported key material (BYOK) through the admin API over real HTTPS (trustme): the material is
wrapped by ``openssl`` from the API's PEM, imported with the API's token, and a ciphertext from
the proxy decrypts locally with the raw material and the spec's EKM AAD; then the same walk
through the CLI with ``--admin-url`` against a running ``xks-proxy serve``. Refusals carry the
CLI's messages as 400/404/409 JSON, never a 500."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import trustme
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.conftest import KEY_BOTH, Deployment, lifecycle_audit_lines
from tests.proxy_process import ProxyProcess, connect, post
from tests.test_admin_api import AiohttpClient, admin_deployment, token
from tests.test_admin_process import deployment, mint  # noqa: F401 (a fixture)
from tests.test_byok import wrap
from tests.test_cli import run
from tests.xks_client import METADATA_BODY, XksClient, encrypt_body, unb64
from xks_proxy.aad import ekm_aad
from xks_proxy.config import load_config
from xks_proxy.runtime import ProxyRuntime
from xks_proxy.web.admin_listener import start_admin_listener
from xks_proxy.web.app import create_app

KEYS = "/admin/v1/key-stores/dev/keys"


def serve_admin_over_tls(config_path: Path, directory: Path) -> trustme.CA:
    """Put an ``[admin.tls]`` with a trustme certificate into the configuration."""
    ca = trustme.CA()
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(directory / "admin-server.pem")
    )
    ca.cert_pem.write_to_path(str(directory / "admin-ca.pem"))
    server = directory / "admin-server.pem"
    text = config_path.read_text()
    assert "[admin.auth]" in text
    config_path.write_text(
        text.replace(
            "[admin.auth]",
            f'[admin.tls]\ncertificate = "{server}"\nprivate_key = "{server}"\n\n[admin.auth]',
        )
    )
    return ca


def decrypt_locally(material: bytes, sealed: dict[str, Any], aad: bytes) -> bytes:
    """What only the holder of the raw material can do: AES-256-GCM with the EKM AAD (§4.2)."""
    return AESGCM(material).decrypt(
        unb64(sealed["initializationVector"]),
        unb64(sealed["ciphertext"]) + unb64(sealed["authenticationTag"]),
        ekm_aad(aad, unb64(sealed["ciphertextMetadata"])),
    )


class Api:
    """The admin API at an HTTPS URL, as a custodian calls it."""

    def __init__(self, session: aiohttp.ClientSession, base: str, context: ssl.SSLContext) -> None:
        self.session, self.base, self.context = session, base, context

    async def call(
        self, method: str, path: str, bearer: str, body: Any = None
    ) -> tuple[int, dict[str, Any]]:
        async with self.session.request(
            method, self.base + path, json=body, ssl=self.context,
            headers={"Authorization": f"Bearer {bearer}"},
        ) as response:  # fmt: skip
            assert response.content_type == "application/json"
            document: dict[str, Any] = json.loads(await response.read())
            return response.status, document


@pytest.fixture
def byok_dep(tmp_path: Path) -> tuple[Deployment, trustme.CA]:
    made = admin_deployment(tmp_path)
    ca = serve_admin_over_tls(made.config_path, tmp_path)
    return Deployment(tmp_path, load_config(made.config_path)), ca


@pytest.fixture
async def api(byok_dep: tuple[Deployment, trustme.CA]) -> AsyncIterator[Api]:
    dep, ca = byok_dep
    listener = await start_admin_listener(dep.config)
    assert listener is not None
    context = ssl.create_default_context()
    ca.configure_trust(context)
    try:
        async with aiohttp.ClientSession() as session:
            yield Api(session, f"https://localhost:{listener.site.port}", context)
    finally:
        await listener.stop()


async def import_over_api(
    api: Api, key_id: str, material: bytes, algorithm: str, work: Path, **extra: Any
) -> tuple[int, dict[str, Any]]:
    custodian = token("key-admin")
    status, parameters = await api.call(
        "POST", f"{KEYS}/{key_id}/import-parameters", custodian,
        {"wrappingAlgorithm": algorithm, "wrappingKeySpec": "RSA_3072"},
    )  # fmt: skip
    assert status == 200, parameters
    assert set(parameters) == {"keyId", "publicKey", "importToken", "parametersValidTo"}
    expires = datetime.fromisoformat(parameters["parametersValidTo"])
    assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(hours=24)
    work.mkdir(parents=True)
    (work / "wrapping-key.pem").write_text(parameters["publicKey"])
    wrapped = wrap(work / "wrapping-key.pem", material, algorithm, work).read_bytes()
    return await api.call(
        "POST", f"{KEYS}/{key_id}/import-material", custodian,
        {
            "encryptedKeyMaterial": base64.b64encode(wrapped).decode(),
            "importToken": parameters["importToken"],
            **extra,
        },
    )  # fmt: skip


async def wait_for_status(xks: XksClient, key_id: str, status: str) -> None:
    """The proxy follows its key store about once a second; give it 5 s."""
    for _ in range(100):
        response = await xks.post("metadata", key_id, METADATA_BODY)
        if json.loads(await response.read()).get("keyStatus") == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{key_id} never {status}")


@pytest.mark.parametrize("algorithm", ["RSAES_OAEP_SHA_256", "RSA_AES_KEY_WRAP_SHA_256"])
async def test_imported_material_over_the_api_encrypts(
    api: Api,
    byok_dep: tuple[Deployment, trustme.CA],
    aiohttp_client: AiohttpClient,
    algorithm: str,
    tmp_path: Path,
) -> None:
    dep, _ = byok_dep
    runtime = ProxyRuntime(dep.config)
    store = runtime.config.key_stores[0]
    xks = XksClient(
        await aiohttp_client(create_app(runtime)), store.uri_path, store.region,
        store.credentials[0],
    )  # fmt: skip
    custodian = token("key-admin")
    status, made = await api.call(
        "POST", KEYS, custodian, {"keyId": "key-byok", "origin": "EXTERNAL"}
    )
    assert (status, made["origin"], made["keyStatus"]) == (201, "external", "PENDING_IMPORT")
    material = os.urandom(32)
    valid_to = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    status, imported = await import_over_api(
        api, "key-byok", material, algorithm, tmp_path / "w1", validTo=valid_to.isoformat()
    )
    assert (status, imported["keyStatus"]) == (200, "ENABLED"), imported
    assert datetime.fromisoformat(imported["validTo"]) == valid_to
    await wait_for_status(xks, "key-byok", "ENABLED")
    sealed = await xks.call("encrypt", "key-byok", encrypt_body(b"over the admin API", b"ctx"))
    assert decrypt_locally(material, sealed, b"ctx") == b"over the admin API"

    status, deleted = await api.call("POST", f"{KEYS}/key-byok/delete-material", custodian)
    assert (status, deleted["keyStatus"]) == (200, "PENDING_IMPORT")
    await wait_for_status(xks, "key-byok", "DISABLED")
    status, again = await api.call("POST", f"{KEYS}/key-byok/delete-material", custodian)
    assert status == 409 and "no key material to delete" in again["message"]
    # KMS's rule: only the same material comes back.
    status, other = await import_over_api(
        api, "key-byok", os.urandom(32), algorithm, tmp_path / "w2"
    )
    assert status == 409 and "only the same material" in other["message"]
    status, same = await import_over_api(api, "key-byok", material, algorithm, tmp_path / "w3")
    assert (status, same["keyStatus"]) == (200, "ENABLED")
    await runtime.close()

    lines = lifecycle_audit_lines(dep.directory / "audit.log")
    byok = [(a["action"], a["outcome"]) for a in lines if a["keyId"] == "key-byok"]
    assert byok[:4] == [
        ("create", "success"), ("import-parameters", "success"), ("import", "success"),
        ("delete-material", "success"),
    ]  # fmt: skip
    assert all(a["actor"].startswith("alice@example.com") for a in lines)
    audit = (dep.directory / "audit.log").read_text()
    assert material.hex() not in audit and base64.b64encode(material).decode() not in audit


async def test_import_refusals_are_clear_json_errors(api: Api, tmp_path: Path) -> None:
    custodian = token("key-admin")
    assert (await api.call("POST", KEYS, custodian, {"keyId": "key-ext", "origin": "external"}))[
        0
    ] == 201
    status, answer = await api.call("POST", KEYS, custodian, {"keyId": "key-x", "origin": "HSM"})
    assert status == 400 and "origin" in answer["message"]
    path = f"{KEYS}/key-ext"
    status, parameters = await api.call(
        "POST", path + "/import-parameters", custodian, {"wrappingAlgorithm": "RSAES_OAEP_SHA_256"}
    )
    assert status == 200
    good_token = parameters["importToken"]
    material = base64.b64encode(os.urandom(256)).decode()
    cases: list[tuple[str, str, Any, int, str]] = [
        ("POST", f"{KEYS}/{KEY_BOTH}/import-parameters",
         {"wrappingAlgorithm": "RSAES_OAEP_SHA_256"}, 409, "--origin external"),
        ("POST", f"{KEYS}/key-none/import-parameters",
         {"wrappingAlgorithm": "RSAES_OAEP_SHA_256"}, 404, "no key key-none"),
        ("POST", path + "/import-parameters", {"wrappingAlgorithm": "RSAES_OAEP_SHA_1"}, 400,
         "wrapping algorithm"),
        ("POST", path + "/import-parameters",
         {"wrappingAlgorithm": "RSAES_OAEP_SHA_256", "wrappingKeySpec": "RSA_1024"}, 400,
         "wrapping key spec"),
        ("POST", path + "/import-parameters", {}, 400, "wrappingAlgorithm: required"),
        ("POST", path + "/import-material", {"encryptedKeyMaterial": "!!", "importToken": "x"},
         400, "not base64"),
        ("POST", path + "/import-material", {"encryptedKeyMaterial": material}, 400,
         "importToken: required"),
        ("POST", path + "/import-material",
         {"encryptedKeyMaterial": material, "importToken": "a.b.c"}, 400,
         "not valid for this key store"),
        ("POST", path + "/import-material",
         {"encryptedKeyMaterial": material, "importToken": good_token}, 400, "does not unwrap"),
        ("POST", f"{KEYS}/key-both/import-material",
         {"encryptedKeyMaterial": material, "importToken": good_token}, 400,
         "is for key key-ext, not key-both"),
        ("POST", path + "/import-material",
         {"encryptedKeyMaterial": material, "importToken": good_token,
          "validTo": "2030-01-01T00:00:00"}, 400, "time zone"),
        ("POST", path + "/import-material",
         {"encryptedKeyMaterial": material, "importToken": good_token,
          "validTo": "2001-01-01T00:00:00Z"}, 400, "not in the future"),
        ("POST", path + "/import-material",
         {"encryptedKeyMaterial": material, "importToken": good_token, "validTo": 5}, 400,
         "validTo: must be a str"),
        ("POST", f"{KEYS}/{KEY_BOTH}/delete-material", None, 409, "--origin external"),
        ("POST", path + "/delete-material", None, 409, "no key material to delete"),
    ]  # fmt: skip
    for method, where, body, expected, message in cases:
        status, answer = await api.call(method, where, custodian, body)
        assert (status, set(answer)) == (expected, {"error", "message"}), (where, body, answer)
        assert message in answer["message"], (where, body, answer)
        assert good_token not in answer["message"]
    # Roles: a viewer or an operator reads the key but does not import.
    for role in ("viewer", "operator", "security-admin"):
        status, _ = await api.call(
            "POST", path + "/import-parameters", token(role),
            {"wrappingAlgorithm": "RSAES_OAEP_SHA_256"},
        )  # fmt: skip
        assert status == 403, role


def test_cli_byok_over_the_admin_url(deployment: Path, tmp_path: Path) -> None:  # noqa: F811
    """``keys create --origin external``, ``import-parameters``, ``import`` and
    ``delete-material`` with ``--admin-url https://…`` against a running proxy."""
    ca = serve_admin_over_tls(deployment, deployment.parent)
    config = load_config(deployment)
    store = config.key_stores[0]
    custodian = mint(deployment, "key-admin", tmp_path / "custodian.jwt")
    assert ca is not None
    material = os.urandom(32)
    key_id = "key-cli-byok"
    with ProxyProcess(deployment, ready="admin API on") as proxy:
        # The admin listener binds port 0 and announces it; its certificate names localhost.
        admin_port = urlsplit(proxy.admin_url).port
        remote = (
            "--admin-url", f"https://localhost:{admin_port}",
            "--admin-cacert", str(deployment.parent / "admin-ca.pem"),
            "--token-file", str(custodian),
        )  # fmt: skip
        made = run("keys", "create", *remote, "--key-id", key_id, "--origin", "external")
        assert "DISABLED until `keys import`" in made.stdout
        out = tmp_path / "params"
        run(
            "keys", "import-parameters", *remote, "--key-id", key_id,
            "--wrapping-algorithm", "RSA_AES_KEY_WRAP_SHA_256", "--out", str(out),
        )  # fmt: skip
        assert (out / "import-token").stat().st_mode & 0o077 == 0
        wrapped = wrap(out / "wrapping-key.pem", material, "RSA_AES_KEY_WRAP_SHA_256", out)
        imported = run(
            "keys", "import", *remote, "--key-id", key_id, "--material", str(wrapped),
            "--import-token", str(out / "import-token"),
        )  # fmt: skip
        assert "usable" in imported.stdout
        reused = run(
            "keys", "import", *remote, "--key-id", key_id, "--material", str(wrapped),
            "--import-token", str(out / "import-token"), check=False,
        )  # fmt: skip
        assert reused.returncode == 1 and "400" in reused.stderr and "used already" in reused.stderr
        path = f"{store.uri_path}/keys/{key_id}"
        connection = connect(proxy.port)
        for _ in range(100):
            status, sealed = post(
                connection, path + "/encrypt", encrypt_body(b"via --admin-url", b"a"),
                store.credentials[0],
            )  # fmt: skip
            if status == 200:
                break
            time.sleep(0.05)
        assert status == 200, sealed
        assert decrypt_locally(material, sealed, b"a") == b"via --admin-url"
        deleted = run("keys", "delete-material", *remote, "--key-id", key_id)
        assert "DISABLED" in deleted.stdout
        listed = json.loads(run("keys", "list", *remote, "--json").stdout)
        assert [r["keyStatus"] for r in listed if r["keyId"] == key_id] == ["PENDING_IMPORT"]
        connection.close()
        assert proxy.stop() == 0
