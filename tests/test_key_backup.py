"""Backup and restore, the failsafe copy: back up, destroy the store, restore, and yesterday's
ciphertexts decrypt; a backup opens under no KEK, only its passphrase; restore never overwrites."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import KEY_BOTH, Deployment, make_deployment
from tests.postgres import PostgresServer
from tests.proxy_process import XKS_PROXY, ProxyProcess, add_tls, close_all, connect, post
from tests.test_credentials_database import Host, database_credentials
from tests.xks_client import METADATA_BODY, decrypt_body, encrypt_body, unb64
from xks_proxy import sigv4
from xks_proxy.scaffold import scaffold

PREFIX = "/keystores/dev/kms/xks/v1"
PASSPHRASE = "correct horse battery staple"


def keys_cli(
    deployment_config: Path, *args: str, passphrase: str = PASSPHRASE
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [XKS_PROXY, "keys", *args, "--config", str(deployment_config),
         "--passphrase-env", "XKS_TEST_BACKUP_PASSPHRASE"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "XKS_TEST_BACKUP_PASSPHRASE": passphrase},
    )  # fmt: skip


def encrypt_with_proxy(deployment: Deployment, plaintext: bytes) -> dict[str, str]:
    credential = deployment.config.key_stores[0].credentials[0]
    try:
        with ProxyProcess(deployment.config_path) as proxy:
            status, encrypted = post(
                connect(proxy.port), f"{PREFIX}/keys/{KEY_BOTH}/encrypt", encrypt_body(plaintext),
                credential,
            )  # fmt: skip
    finally:
        close_all()
    assert status == 200
    return encrypted


def test_back_up_destroy_restore_and_old_ciphertexts_decrypt(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path / "d")
    config = str(deployment.config_path)
    rotated = subprocess.run(
        [XKS_PROXY, "keys", "rotate", "--config", config, "--key-id", KEY_BOTH],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "version 2" in rotated.stdout
    yesterday = encrypt_with_proxy(deployment, b"yesterday")
    backup = tmp_path / "keys.backup"
    made = keys_cli(deployment.config_path, "backup", "--out", str(backup))
    assert made.returncode == 0, made.stderr
    assert "backed up 6 keys" in made.stdout
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    document = json.loads(backup.read_text())
    assert document["format"] == "xks-proxy-key-backup" and document["version"] == 1
    assert document["kdf"]["name"] == "scrypt"
    assert KEY_BOTH not in backup.read_text()  # ids, states and material are all sealed

    for name in ("keys.db", "keys.db-wal", "keys.db-shm"):
        (deployment.directory / name).unlink(missing_ok=True)
    restored = keys_cli(deployment.config_path, "restore", "--in", str(backup))
    assert restored.returncode == 0, restored.stderr
    assert "restored 6 keys; 0 were already" in restored.stdout
    again = keys_cli(deployment.config_path, "restore", "--in", str(backup))
    assert again.returncode == 0 and "restored 0 keys; 6 were already" in again.stdout

    credential = deployment.config.key_stores[0].credentials[0]
    try:
        with ProxyProcess(deployment.config_path) as proxy:
            status, decrypted = post(
                connect(proxy.port), f"{PREFIX}/keys/{KEY_BOTH}/decrypt", decrypt_body(yesterday),
                credential,
            )  # fmt: skip
            assert status == 200 and unb64(decrypted["plaintext"]) == b"yesterday"
            status, metadata = post(
                connect(proxy.port), f"{PREFIX}/keys/key-disabled/metadata", METADATA_BODY,
                credential,
            )  # fmt: skip
            assert status == 200 and metadata["keyStatus"] == "DISABLED"
    finally:
        close_all()


def test_a_backup_restores_into_a_postgresql_store_under_another_kek(
    tmp_path: Path, postgres_url: str
) -> None:
    source = make_deployment(tmp_path / "source")
    yesterday = encrypt_with_proxy(source, b"moved")
    backup = tmp_path / "keys.backup"
    assert keys_cli(source.config_path, "backup", "--out", str(backup)).returncode == 0
    target = scaffold(tmp_path / "target", key_id="unrelated", port=0, metrics_port=0, admin_port=0,
                      database_url=postgres_url)  # fmt: skip
    config = target.config_path
    config.write_text(config.read_text().replace('keys = ["*"]', 'keys = ["key-*"]'))
    credential = source.config.key_stores[0].credentials[0]
    # The target authenticates KMS with the source's credential, as a rebuilt host would.
    (tmp_path / "target" / "credentials.json").write_text(
        (tmp_path / "source" / "credentials.json").read_text()
    )
    restored = keys_cli(config, "restore", "--in", str(backup))
    assert restored.returncode == 0, restored.stderr
    assert "restored 6 keys" in restored.stdout
    try:
        with ProxyProcess(config) as proxy:
            status, decrypted = post(
                connect(proxy.port), f"{PREFIX}/keys/{KEY_BOTH}/decrypt", decrypt_body(yesterday),
                credential,
            )  # fmt: skip
            assert status == 200 and unb64(decrypted["plaintext"]) == b"moved"
    finally:
        close_all()


def test_restore_refuses_a_key_id_with_other_material_and_writes_nothing(tmp_path: Path) -> None:
    first = make_deployment(tmp_path / "first")
    second = make_deployment(tmp_path / "second")  # the same key ids, other material
    backup = tmp_path / "keys.backup"
    assert keys_cli(first.config_path, "backup", "--out", str(backup)).returncode == 0
    (second.directory / "keys.db").unlink()
    subprocess.run(
        [XKS_PROXY, "keys", "create", "--config", str(second.config_path), "--key-id", KEY_BOTH],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    refused = keys_cli(second.config_path, "restore", "--in", str(backup))
    assert refused.returncode == 1
    assert f"key {KEY_BOTH} has other material" in refused.stderr
    listed = subprocess.run(
        [XKS_PROXY, "keys", "list", "--config", str(second.config_path), "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert [row["keyId"] for row in json.loads(listed.stdout)] == [KEY_BOTH]


@pytest.mark.parametrize(
    ("change", "passphrase", "message"),
    [
        (None, "a wrong passphrase here", "wrong passphrase, or the backup was altered"),
        ("n", PASSPHRASE, "wrong passphrase, or the backup was altered"),
        ("format", PASSPHRASE, "not an xks-proxy-key-backup of version 1"),
        ("nonce", PASSPHRASE, "not a readable key backup"),
        (None, "short", "at least 12 characters"),
    ],
)
def test_a_wrong_passphrase_or_an_altered_backup_is_refused(
    tmp_path: Path, change: str | None, passphrase: str, message: str
) -> None:
    deployment = make_deployment(tmp_path / "d")
    backup = tmp_path / "keys.backup"
    assert keys_cli(deployment.config_path, "backup", "--out", str(backup)).returncode == 0
    document = json.loads(backup.read_text())
    if change == "n":
        document["kdf"]["n"] = 2**14  # a cheaper KDF must not pass for the real one
    elif change == "format":
        document["version"] = 2
    elif change == "nonce":
        document["nonce"] = "not base64!"
    backup.write_text(json.dumps(document))
    refused = keys_cli(
        deployment.config_path, "restore", "--in", str(backup), passphrase=passphrase
    )
    assert refused.returncode == 1, refused.stderr
    assert message in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


def fresh_store(deployment: Deployment, request: pytest.FixtureRequest) -> None:
    """The deployment's store destroyed: its SQLite files gone, or a new empty database."""
    backend: Any = deployment.config.backends["local"]
    if backend.database_url is None:
        for name in ("keys.db", "keys.db-wal", "keys.db-shm"):
            (deployment.directory / name).unlink(missing_ok=True)
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    empty = server.create_database(f"xks_restore_{uuid.uuid4().hex[:12]}")
    path = deployment.config_path
    path.write_text(path.read_text().replace(backend.database_url, empty))


def test_stored_credentials_are_backed_up_sealed_and_a_restored_one_verifies_curl(
    tmp_path: Path, store_url: str | None, request: pytest.FixtureRequest
) -> None:
    deployment = make_deployment(tmp_path / "d", database_url=store_url)
    add_tls(deployment.config_path)
    credential = database_credentials(deployment)
    backup = tmp_path / "keys.backup"
    made = keys_cli(deployment.config_path, "backup", "--out", str(backup))
    assert made.returncode == 0, made.stderr
    assert "backed up 6 keys and 1 stored credentials" in made.stdout
    text = backup.read_text()
    # Nothing in clear: not the secret, its Base64, the access key id, nor a key id.
    secret = credential.secret_access_key
    for clear in (secret, base64.b64encode(secret.encode()).decode(), credential.access_key_id,
                  KEY_BOTH):  # fmt: skip
        assert clear not in text

    fresh_store(deployment, request)
    restored = keys_cli(deployment.config_path, "restore", "--in", str(backup))
    assert restored.returncode == 0, restored.stderr
    assert "restored 6 keys" in restored.stdout
    assert "restored 1 stored credentials; 0 were already" in restored.stdout
    again = keys_cli(deployment.config_path, "restore", "--in", str(backup))
    assert "restored 0 stored credentials; 1 were already" in again.stdout, again.stderr

    host = Host(deployment.config_path)
    listed = host.credentials("list")
    assert credential.access_key_id in listed and secret not in listed
    wrong = sigv4.Credential(credential.access_key_id, secret[::-1])
    try:
        with ProxyProcess(deployment.config_path) as proxy:
            assert host.status(proxy, credential) == 200  # signed by curl --aws-sigv4
            assert host.status(proxy, wrong) == 401
    finally:
        close_all()


def test_restore_keeps_a_revoked_credential_revoked_and_refuses_another_secret(
    tmp_path: Path,
) -> None:
    deployment = make_deployment(tmp_path / "d")
    credential = database_credentials(deployment)
    host = Host(deployment.config_path)
    backup = tmp_path / "keys.backup"
    assert keys_cli(deployment.config_path, "backup", "--out", str(backup)).returncode == 0

    host.credentials("revoke", "--access-key-id", credential.access_key_id, "--force")
    kept = keys_cli(deployment.config_path, "restore", "--in", str(backup))
    assert kept.returncode == 0, kept.stderr
    assert f"credential {credential.access_key_id} was revoked in the store since" in kept.stdout
    assert credential.access_key_id not in host.credentials("list")

    # An empty store that has the same access key id with another secret: nothing is written.
    for name in ("keys.db", "keys.db-wal", "keys.db-shm"):
        (deployment.directory / name).unlink(missing_ok=True)
    host.credentials("add", "--access-key-id", credential.access_key_id, "--secret-stdin",
                     stdin=credential.secret_access_key[::-1])  # fmt: skip
    refused = keys_cli(deployment.config_path, "restore", "--in", str(backup))
    assert refused.returncode == 1
    assert f"credential {credential.access_key_id} has another secret" in refused.stderr
    assert "Traceback" not in refused.stderr and credential.secret_access_key not in refused.stderr
    listed = subprocess.run(
        [XKS_PROXY, "keys", "list", "--config", str(deployment.config_path), "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert json.loads(listed.stdout) == []
