"""Imported key material (BYOK): the material is wrapped by ``openssl`` exactly as the AWS KMS
Developer Guide shows ("Encrypt key material"), imported through the key lifecycle service and
the CLI, and a ciphertext from the running proxy decrypts locally with the raw material."""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.conftest import lifecycle_audit_lines, make_deployment
from tests.proxy_process import XKS_PROXY, ProxyProcess, close_all, connect, post
from tests.xks_client import METADATA_BODY, encrypt_body, unb64
from xks_proxy.aad import ekm_aad
from xks_proxy.backends.base import DECRYPT, ENCRYPT
from xks_proxy.backends.software import SoftwareBackend
from xks_proxy.config import AuditConfig, SoftwareBackendConfig
from xks_proxy.errors import InvalidCiphertextError
from xks_proxy.keymgmt.audit import LifecycleAudit
from xks_proxy.keymgmt.byok import ImportRefusedError
from xks_proxy.keymgmt.service import KeyManager
from xks_proxy.keystore.imported import ImportedMaterial
from xks_proxy.keystore.store import KeyDatabase, KeyStateError

BOTH = frozenset({ENCRYPT, DECRYPT})
PREFIX = "/keystores/dev/kms/xks/v1"
ALGORITHMS = ("RSAES_OAEP_SHA_256", "RSA_AES_KEY_WRAP_SHA_256")


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def wrap(public_pem: Path, material: bytes, algorithm: str, work: Path) -> Path:
    """The wrapped material file, made by openssl as AWS documents it for KMS."""
    work.mkdir(parents=True, exist_ok=True)
    plain = work / "material.bin"
    plain.write_bytes(material)
    encrypt = [
        "pkeyutl", "-encrypt", "-pubin", "-inkey", str(public_pem),
        "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256",
        "-pkeyopt", "rsa_mgf1_md:sha256",
    ]  # fmt: skip
    out = work / "wrapped.bin"
    if algorithm == "RSAES_OAEP_SHA_256":
        openssl(*encrypt, "-in", str(plain), "-out", str(out))
        return out
    # A random AES-256 key wrapped with RSA-OAEP, then the material under AES key wrap with
    # padding (a throwaway test key on argv, as AWS shows it).
    aes_key = os.urandom(32)
    (work / "aes.bin").write_bytes(aes_key)
    openssl(*encrypt, "-in", str(work / "aes.bin"), "-out", str(work / "aes.wrapped"))
    openssl(
        "enc", "-id-aes256-wrap-pad", "-K", aes_key.hex(), "-iv", "A65959A6",
        "-in", str(plain), "-out", str(work / "material.wrapped"),
    )  # fmt: skip
    out.write_bytes((work / "aes.wrapped").read_bytes() + (work / "material.wrapped").read_bytes())
    return out


class Importer:
    """Import parameters from the service, material wrapped by openssl, imported back."""

    def __init__(self, keys: KeyManager, work: Path) -> None:
        self.keys = keys
        self.work = work
        self.count = 0

    def wrapped(
        self, key_id: str, material: bytes, algorithm: str, **options: Any
    ) -> tuple[bytes, str]:
        self.count += 1
        parameters = self.keys.import_parameters(key_id, algorithm, "RSA_2048", **options)
        directory = self.work / str(self.count)
        directory.mkdir(parents=True)
        (directory / "wrapping-key.pem").write_bytes(parameters.public_key_pem)
        wrapped = wrap(directory / "wrapping-key.pem", material, algorithm, directory)
        return wrapped.read_bytes(), parameters.token

    def run(
        self, key_id: str, material: bytes, algorithm: str, *,
        now: datetime | None = None, valid_to: datetime | None = None,
    ) -> None:  # fmt: skip
        wrapped, token = self.wrapped(key_id, material, algorithm, now=now)
        self.keys.import_material(key_id, wrapped, token, valid_to)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_import_installs_the_material_and_refuses_what_kms_refuses(
    location: str, algorithm: str, tmp_path: Path
) -> None:
    database = KeyDatabase(location, os.urandom(32))
    audit = tmp_path / "audit.log"
    keys = KeyManager(database, LifecycleAudit(AuditConfig(path=str(audit))), "tester@host")
    importer = Importer(keys, tmp_path / "work")
    material, other = os.urandom(32), os.urandom(32)
    try:
        keys.create_external("byok", BOTH)
        keys.create("own", BOTH)
        keys.create_external("byok-2", BOTH)
        (record, *_) = keys.keys()
        assert record.key_id == "byok" and record.origin == "external" and not record.versions

        with pytest.raises(KeyStateError, match="--origin external"):
            keys.import_parameters("own", algorithm, "RSA_2048")
        with pytest.raises(ImportRefusedError, match="wrapping algorithm"):
            keys.import_parameters("byok", "RSAES_OAEP_SHA_1", "RSA_2048")

        wrapped, token = importer.wrapped("byok", material, algorithm)
        with pytest.raises(ImportRefusedError, match="is for key byok, not byok-2"):
            keys.import_material("byok-2", wrapped, token)
        keys.import_material("byok", wrapped, token)
        (loaded,) = [k for k in database.load() if k.key_id == "byok"]
        assert loaded.versions == {1: material}
        with pytest.raises(ImportRefusedError, match="used already or has expired"):
            keys.import_material("byok", wrapped, token)

        with pytest.raises(KeyStateError, match="other key material before"):
            importer.run("byok", other, algorithm)
        importer.run("byok", material, algorithm)  # the same material again: accepted
        with pytest.raises(KeyStateError, match="imported keys cannot be rotated"):
            keys.rotate("byok")

        with pytest.raises(ImportRefusedError, match="33 bytes; an AES-256 key is exactly 32"):
            importer.run("byok-2", os.urandom(33), algorithm)
        with pytest.raises(ImportRefusedError, match="has expired"):
            importer.run("byok-2", other, algorithm, now=datetime.now(UTC) - timedelta(hours=25))
        # Material wrapped for one token's key, imported with another token: does not unwrap.
        wrapped, _ = importer.wrapped("byok-2", other, algorithm)
        _, token = importer.wrapped("byok-2", other, algorithm)
        with pytest.raises(ImportRefusedError, match="does not unwrap"):
            keys.import_material("byok-2", wrapped, token)
        with pytest.raises(ImportRefusedError, match="not valid for this key store"):
            keys.import_material("byok-2", wrapped, token[:-4] + "AAAA")

        keys.delete_material("byok")
        (record, *_) = keys.keys()
        assert not record.versions and record.material_fingerprint
        with pytest.raises(KeyStateError, match="no key material to delete"):
            keys.delete_material("byok")
        with pytest.raises(KeyStateError, match="other key material before"):
            importer.run("byok", other, algorithm)
        importer.run("byok", material, algorithm)
        (loaded,) = [k for k in database.load() if k.key_id == "byok"]
        assert loaded.versions == {1: material}
    finally:
        database.close()
    text = audit.read_text()
    assert material.hex() not in text and other.hex() not in text
    outcomes = [(line["action"], line["outcome"]) for line in lifecycle_audit_lines(audit)]
    for expected in [
        ("create", "success"), ("import-parameters", "refused"), ("import", "success"),
        ("import", "refused"), ("rotate", "refused"), ("delete-material", "success"),
    ]:  # fmt: skip
        assert expected in outcomes


def test_valid_to_must_be_ahead_and_within_365_days_as_in_kms(tmp_path: Path) -> None:
    database = KeyDatabase(tmp_path / "keys.db", os.urandom(32))
    audit = tmp_path / "audit.log"
    keys = KeyManager(database, LifecycleAudit(AuditConfig(path=str(audit))), "tester@host")
    importer = Importer(keys, tmp_path / "work")
    try:
        keys.create_external("byok", BOTH)
        wrapped, token = importer.wrapped("byok", os.urandom(32), "RSAES_OAEP_SHA_256")
        now = datetime.now(UTC)
        with pytest.raises(ImportRefusedError, match="is not in the future"):
            keys.import_material("byok", wrapped, token, now - timedelta(seconds=1))
        with pytest.raises(ImportRefusedError, match="more than 365 days ahead"):
            keys.import_material("byok", wrapped, token, now + timedelta(days=365, minutes=1))
        # A refused --valid-to leaves the token usable: nothing was consumed.
        keys.import_material("byok", wrapped, token, now + timedelta(days=364, hours=23))
        (record,) = keys.keys()
        assert record.versions and record.valid_to is not None
    finally:
        database.close()
    outcomes = [(line["action"], line["outcome"]) for line in lifecycle_audit_lines(audit)]
    assert outcomes.count(("import", "refused")) == 2


async def test_material_past_valid_to_is_disabled_at_once_and_swept(tmp_path: Path) -> None:
    kek = os.urandom(32)
    path = tmp_path / "keys.db"
    database = KeyDatabase(path, kek)
    keys = KeyManager(database, LifecycleAudit(AuditConfig(enabled=False)), "tester")
    importer = Importer(keys, tmp_path / "work")
    keys.create_external("short", BOTH)
    keys.create_external("empty", BOTH)
    valid_to = datetime.now(UTC) + timedelta(seconds=3)
    importer.run("short", os.urandom(32), "RSAES_OAEP_SHA_256", valid_to=valid_to)
    backend = SoftwareBackend(SoftwareBackendConfig("local", path, kek))
    await backend.open()
    try:
        assert not (await backend.describe_key("empty")).enabled
        if datetime.now(UTC) < valid_to - timedelta(seconds=1):  # the store keeps whole seconds
            assert (await backend.describe_key("short")).enabled
        while datetime.now(UTC) < valid_to:
            time.sleep(0.1)
        assert not (await backend.describe_key("short")).enabled  # no sweep needed
        assert ImportedMaterial(database).expire(datetime.now(UTC)).material == ["short"]
        (record, _) = sorted(database.records(), key=lambda r: r.key_id != "short")[:2]
        assert record.key_id == "short" and not record.versions
    finally:
        await backend.close()
        database.close()


def test_cli_byok_walk_through_against_the_running_proxy(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path / "d")
    config = str(deployment.config_path)
    credential = deployment.config.key_stores[0].credentials[0]
    key_id = "key-byok"
    material = os.urandom(32)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [XKS_PROXY, "keys", *args, "--config", config],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def import_parameters(algorithm: str, out: Path) -> subprocess.CompletedProcess[str]:
        return cli(
            "import-parameters", "--key-id", key_id, "--wrapping-algorithm", algorithm,
            "--wrapping-key-spec", "RSA_3072", "--out", str(out),
        )  # fmt: skip

    def import_material(
        algorithm: str, out: Path, valid_for: timedelta | None = None
    ) -> tuple[subprocess.CompletedProcess[str], datetime | None]:
        """``keys import``; with ``valid_for``, a ``--valid-to`` that long after the command
        starts (counted after the wrapping, which takes long on a busy machine)."""
        made = import_parameters(algorithm, out)
        assert made.returncode == 0, made.stderr
        wrapped = wrap(out / "wrapping-key.pem", material, algorithm, out)
        valid_to = None if valid_for is None else datetime.now(UTC) + valid_for
        extra = () if valid_to is None else ("--valid-to", valid_to.isoformat())
        imported = cli(
            "import", "--key-id", key_id, "--material", str(wrapped),
            "--import-token", str(out / "import-token"), *extra,
        )  # fmt: skip
        return imported, valid_to

    created = cli("create", "--key-id", key_id, "--origin", "external")
    assert created.returncode == 0, created.stderr
    listed = json.loads(cli("list", "--json").stdout)
    assert [r["keyStatus"] for r in listed if r["keyId"] == key_id] == ["PENDING_IMPORT"]
    try:
        with ProxyProcess(deployment.config_path) as proxy:

            def call(operation: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
                path = f"{PREFIX}/keys/{key_id}/{operation}"
                return post(connect(proxy.port), path, body, credential)

            def wait_for(status: str, bound: float) -> None:
                started = time.monotonic()
                while call("metadata", METADATA_BODY)[1]["keyStatus"] != status:
                    assert time.monotonic() - started < bound, f"never {status}"
                    time.sleep(0.05)

            assert call("metadata", METADATA_BODY)[1]["keyStatus"] == "DISABLED"
            status, body = call("encrypt", encrypt_body(b"x"))
            assert status == 400 and body["errorName"] == "InvalidStateException"

            imported, _ = import_material("RSA_AES_KEY_WRAP_SHA_256", tmp_path / "p1")
            assert imported.returncode == 0, imported.stderr
            assert (tmp_path / "p1" / "import-token").stat().st_mode & 0o077 == 0
            wait_for("ENABLED", 5)
            aad = b"context"
            status, sealed = call("encrypt", encrypt_body(b"bring your own key", aad))
            assert status == 200, sealed
            metadata = unb64(sealed["ciphertextMetadata"])
            plaintext = AESGCM(material).decrypt(
                unb64(sealed["initializationVector"]),
                unb64(sealed["ciphertext"]) + unb64(sealed["authenticationTag"]),
                ekm_aad(aad, metadata),
            )
            assert plaintext == b"bring your own key"

            deleted = cli("delete-material", "--key-id", key_id)
            assert deleted.returncode == 0 and "DISABLED" in deleted.stdout, deleted.stderr
            wait_for("DISABLED", 5)

            again, valid_to = import_material(
                "RSAES_OAEP_SHA_256", tmp_path / "p2", timedelta(seconds=12)
            )
            assert again.returncode == 0, again.stderr
            assert valid_to is not None
            while datetime.now(UTC) < valid_to:
                time.sleep(0.1)
            wait_for("DISABLED", 5)
            status, body = call("encrypt", encrypt_body(b"x"))
            assert status == 400 and body["errorName"] == "InvalidStateException"
    finally:
        close_all()

    listed = json.loads(cli("list", "--json").stdout)
    (row,) = [r for r in listed if r["keyId"] == key_id]
    assert row["origin"] == "external" and row["validTo"]
    (text,) = [line for line in cli("list").stdout.splitlines() if line.startswith(key_id)]
    assert text.endswith(f"  external  valid to {row['validTo']}")
    refused = cli("rotate", "--key-id", key_id)
    assert refused.returncode == 1 and "imported keys cannot be rotated" in refused.stderr
    material = os.urandom(32)
    other, _ = import_material("RSAES_OAEP_SHA_256", tmp_path / "p3")
    assert other.returncode == 1 and "only the same material" in other.stderr
    naive = cli(
        "import", "--key-id", key_id, "--material", config, "--import-token", config,
        "--valid-to", "2030-01-01T00:00:00",
    )  # fmt: skip
    assert naive.returncode == 2 and "time zone" in naive.stderr
    lines = lifecycle_audit_lines(deployment.directory / "audit.log")
    actions = [(line["action"], line["outcome"]) for line in lines]
    assert actions[:4] == [
        ("create", "success"), ("import-parameters", "success"), ("import", "success"),
        ("delete-material", "success"),
    ]  # fmt: skip
    assert all(material.hex() not in json.dumps(line) for line in lines)


def test_backup_and_restore_keep_an_imported_key_imported(tmp_path: Path) -> None:
    source = KeyDatabase(tmp_path / "a.db", os.urandom(32))
    target = KeyDatabase(tmp_path / "b.db", os.urandom(32))
    audit = LifecycleAudit(AuditConfig(enabled=False))
    keys = KeyManager(source, audit, "tester")
    material = os.urandom(32)
    try:
        keys.create_external("byok", BOTH)
        valid_to = datetime.now(UTC) + timedelta(days=30)
        Importer(keys, tmp_path / "work").run(
            "byok", material, "RSAES_OAEP_SHA_256", valid_to=valid_to
        )
        document, _, _ = keys.backup("a long enough passphrase")
        restored = KeyManager(target, audit, "tester")
        restored.restore(document, "a long enough passphrase")
        (key,) = [k for k in target.load() if not k.internal]
        (original,) = [k for k in source.load() if not k.internal]
        assert key.versions == {1: material} and key.origin == "external"
        assert (key.valid_to, key.material_fingerprint) == (
            original.valid_to,
            original.material_fingerprint,
        )
        with pytest.raises(KeyStateError, match="cannot be rotated"):
            restored.rotate("byok")
    finally:
        source.close()
        target.close()


def test_migrate_copies_an_imported_key_as_imported(tmp_path: Path) -> None:
    kek = os.urandom(32)
    source = KeyDatabase(tmp_path / "a.db", kek)
    target = KeyDatabase(tmp_path / "b.db", kek)
    keys = KeyManager(source, LifecycleAudit(AuditConfig(enabled=False)), "tester")
    material = os.urandom(32)
    try:
        keys.create_external("byok", BOTH)
        keys.create_external("pending", BOTH)
        Importer(keys, tmp_path / "work").run("byok", material, "RSA_AES_KEY_WRAP_SHA_256")
        target.copy_records(r for r in source.records() if not r.internal)
        copied = {k.key_id: k for k in target.load()}
        assert copied["byok"].versions == {1: material} and copied["byok"].origin == "external"
        assert copied["pending"].versions == {} and copied["pending"].origin == "external"
        with pytest.raises(KeyStateError, match="cannot be rotated"):
            target.rotate_key("byok")
    finally:
        source.close()
        target.close()


async def test_deleted_material_stops_decrypting_though_its_cipher_was_cached(
    tmp_path: Path,
) -> None:
    """The backend uses only the versions its key's record has now: a cipher unsealed before
    the material was deleted neither decrypts nor stays in the cache."""
    kek = os.urandom(32)
    database = KeyDatabase(tmp_path / "keys.db", kek)
    keys = KeyManager(database, LifecycleAudit(AuditConfig(enabled=False)), "tester@host")
    keys.create_external("byok", BOTH)
    Importer(keys, tmp_path / "work").run("byok", os.urandom(32), "RSAES_OAEP_SHA_256")
    backend = SoftwareBackend(SoftwareBackendConfig("soft", tmp_path / "keys.db", kek))
    await backend.open()
    try:
        sealed = await backend.encrypt("byok", b"secret", None)
        assert await backend.decrypt("byok", sealed, None) == b"secret"
        cached = len(backend._cache or ())
        keys.delete_material("byok")
        assert backend._follower is not None
        await backend._follower.sync()
        with pytest.raises(InvalidCiphertextError):
            await backend.decrypt("byok", sealed, None)
        assert len(backend._cache or ()) == cached - 1
    finally:
        await backend.close()
        database.close()
