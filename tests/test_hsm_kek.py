"""A KEK in an HSM (issue 12 §2), on real SoftHSM2, with SQLite and a real PostgreSQL store.

Every HSM step runs in a subprocess with its own SoftHSM2 directory (``SOFTHSM2_CONF``), as an
operator's commands and proxies would: ``pkcs11 create-kek``, ``keys rewrap``, ``serve`` over
HTTPS. OpenSSL unwraps a stored row on its own (``enc -id-aes256-wrap-pad``) to show the row
format is plain RFC 5649 key wrap of the documented payload.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.conftest import KEY_BOTH, KEY_ENCRYPT_ONLY, Deployment, lifecycle_audit_lines
from tests.conftest import make_deployment as make_file_kek_deployment
from tests.proxy_process import XKS_PROXY, ProxyProcess, add_tls, close_all, connect, post
from tests.softhsm import USER_PIN, SoftHsm, find_module, make_softhsm
from tests.test_byok import wrap
from tests.test_credentials_database import database_credentials
from tests.test_keystore import execute_raw
from tests.xks_client import HEALTH_BODY, decrypt_body, encrypt_body, unb64
from xks_proxy.aad import ekm_aad
from xks_proxy.errors import ConfigError
from xks_proxy.kek_config import Pkcs11Kek, parse_kek_setting
from xks_proxy.keystore.location import StoreLocation
from xks_proxy.keystore.records import KeyRecord, SealedVersion
from xks_proxy.keystore.resealing import reseal_store
from xks_proxy.keystore.sealing import SoftwareKeySealer, bound_aad
from xks_proxy.keystore.store import KeyDatabase

PREFIX = "/keystores/dev/kms/xks/v1"
KEK_TOKEN = "xks-kek"
PIN_ENV = "XKS_TEST_KEK_PIN"


def kek_uri(hsm: SoftHsm, label: str = "kek") -> str:
    return (
        f"pkcs11:token={KEK_TOKEN};object={label}?module-path={hsm.module}&pin-source=env:{PIN_ENV}"
    )


def hsm_env(hsm: SoftHsm, pin: str = USER_PIN) -> dict[str, str]:
    return {**os.environ, "SOFTHSM2_CONF": str(hsm.conf), PIN_ENV: pin}


def run(hsm: SoftHsm, *args: str, pin: str = USER_PIN) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [XKS_PROXY, *args], capture_output=True, text=True, timeout=120, check=False,
        env=hsm_env(hsm, pin),
    )  # fmt: skip


def kek_token(directory: Path) -> SoftHsm:
    hsm = make_softhsm(directory)
    hsm.init_token(KEK_TOKEN)
    return hsm


def set_kek(deployment: Deployment, value: str) -> None:
    path = deployment.config_path
    text = re.sub(r'^kek = ".*"$', f'kek = "{value}"', path.read_text(), count=1, flags=re.M)
    path.write_text(text)


def make_deployment(directory: Path, location: str) -> Deployment:
    """The test keys, under a file KEK, in SQLite (``location`` sqlite:) or PostgreSQL."""
    url = None if location.startswith("sqlite:") else location
    return make_file_kek_deployment(directory, database_url=url)


def store_of(deployment: Deployment) -> str:
    """The deployment's store as ``execute_raw`` takes it."""
    backend: Any = deployment.config.backends["local"]
    return backend.database_url or f"sqlite:{backend.path}"


def read_raw(location: str, sql: str) -> list[tuple[Any, ...]]:
    parsed = StoreLocation.parse(location)
    if parsed.kind == "sqlite":
        import sqlite3

        with sqlite3.connect(parsed.target) as db:
            return db.execute(sql).fetchall()
    import psycopg

    with psycopg.connect(parsed.target) as db:
        return [tuple(row) for row in db.execute(sql.encode()).fetchall()]


def rewrap(deployment: Deployment, hsm: SoftHsm, new_kek: str) -> str:
    done = run(hsm, "keys", "rewrap", "--config", str(deployment.config_path), "--new-kek", new_kek)
    assert done.returncode == 0, done.stderr
    return done.stdout


def to_hsm(deployment: Deployment, hsm: SoftHsm) -> str:
    """Create the KEK in the token, rewrap the store under it, configure it."""
    created = run(hsm, "pkcs11", "create-kek", "--kek", kek_uri(hsm))
    assert created.returncode == 0, created.stderr
    output = rewrap(deployment, hsm, kek_uri(hsm))
    assert f'kek = "{kek_uri(hsm)}"' in output
    set_kek(deployment, kek_uri(hsm))
    return output


class Https:
    """``serve`` over HTTPS with the KEK's SoftHSM and PIN in its environment."""

    def __init__(self, deployment: Deployment, hsm: SoftHsm, authority: trustme.CA) -> None:
        self.deployment = deployment
        self.credential = deployment.config.key_stores[0].credentials[0]
        self.context = ssl.create_default_context()
        authority.configure_trust(self.context)
        launcher = ("env", f"SOFTHSM2_CONF={hsm.conf}", f"{PIN_ENV}={USER_PIN}")
        self.proxy = ProxyProcess(deployment.config_path, launcher=launcher)

    def call(self, key_id: str, operation: str, body: dict[str, Any]) -> tuple[int, Any]:
        path = f"{PREFIX}/keys/{key_id}/{operation}"
        return post(connect(self.proxy.port, self.context), path, body, self.credential)

    def encrypt(self, key_id: str, plaintext: bytes) -> dict[str, Any]:
        # A key that cannot decrypt cannot prove a ciphertextDataIntegrityValue.
        body = encrypt_body(plaintext, cdiv=key_id != KEY_ENCRYPT_ONLY)
        status, body = self.call(key_id, "encrypt", body)
        assert status == 200, body
        return dict(body)

    def decrypt(self, key_id: str, encrypted: dict[str, Any]) -> bytes:
        status, body = self.call(key_id, "decrypt", decrypt_body(encrypted))
        assert status == 200, body
        return unb64(body["plaintext"])

    def health(self) -> str:
        status, body = post(
            connect(self.proxy.port, self.context), f"{PREFIX}/health", HEALTH_BODY,
            self.credential,
        )  # fmt: skip
        assert status == 200, body
        return str(body["ekmFleetDetails"][0]["healthStatus"])

    def stop(self) -> None:
        close_all()
        self.proxy.stop()


def test_rewrap_file_to_pkcs11_and_back_serving_over_https_all_along(
    tmp_path: Path, location: str
) -> None:
    hsm = kek_token(tmp_path / "hsm")
    deployment = make_deployment(tmp_path / "d", location)
    authority = add_tls(deployment.config_path)
    old_kek = (deployment.directory / "kek.key").read_text()

    proxy = Https(deployment, hsm, authority)
    try:
        yesterday = proxy.encrypt(KEY_BOTH, b"sealed under the file KEK")
    finally:
        proxy.stop()

    output = to_hsm(deployment, hsm)
    assert "resealed 7 key versions and 0 store secrets" in output  # 6 keys, the health key
    assert "under a pkcs11 KEK" in output and "(was a software KEK" in output
    # The rows are now RFC 5649 wraps made by the token: no nonce, no AES-GCM.
    rows = read_raw(store_of(deployment), "SELECT nonce, sealed FROM key_versions")
    assert rows and all(bytes(nonce) == b"" and len(sealed) == 80 for nonce, sealed in rows)

    proxy = Https(deployment, hsm, authority)
    try:
        assert proxy.health() == "ACTIVE"
        assert proxy.decrypt(KEY_BOTH, yesterday) == b"sealed under the file KEK"
        today = proxy.encrypt(KEY_BOTH, b"sealed under the pkcs11 KEK")
        assert proxy.decrypt(KEY_BOTH, today) == b"sealed under the pkcs11 KEK"
    finally:
        proxy.stop()

    new_file_kek = tmp_path / "new-kek.key"
    new_file_kek.write_text(base64.b64encode(os.urandom(32)).decode())
    output = rewrap(deployment, hsm, f"file:{new_file_kek}")
    assert "under a software KEK" in output and "(was a pkcs11 KEK" in output
    set_kek(deployment, f"file:{new_file_kek}")
    proxy = Https(deployment, hsm, authority)
    try:
        assert proxy.decrypt(KEY_BOTH, yesterday) == b"sealed under the file KEK"
        assert proxy.decrypt(KEY_BOTH, today) == b"sealed under the pkcs11 KEK"
    finally:
        proxy.stop()

    audit = [line for line in lifecycle_audit_lines(deployment.directory / "audit.log")
             if line["action"] == "rewrap"]  # fmt: skip
    assert [line["outcome"] for line in audit] == ["success", "success"]
    assert "from a software KEK" in audit[0]["detail"] and "to a pkcs11 KEK" in audit[0]["detail"]
    log = (deployment.directory / "audit.log").read_text()
    assert old_kek.strip() not in log and new_file_kek.read_text() not in log


def test_a_store_without_its_hsm_does_not_open(tmp_path: Path, location: str) -> None:
    hsm = kek_token(tmp_path / "hsm")
    deployment = make_deployment(tmp_path / "d", location)
    to_hsm(deployment, hsm)
    config = str(deployment.config_path)
    assert run(hsm, "check-config", "--config", config).returncode == 0

    # The same store on a host whose HSM has no such token (a copied file, the shared database).
    elsewhere = make_softhsm(tmp_path / "elsewhere")
    refused = run(elsewhere, "check-config", "--config", config)
    assert refused.returncode == 2
    assert f"no token with label {KEK_TOKEN!r}" in refused.stderr
    # A token of the same name whose KEK is another key: refused naming both check values.
    elsewhere.init_token(KEK_TOKEN)
    assert run(elsewhere, "pkcs11", "create-kek", "--kek", kek_uri(elsewhere)).returncode == 0
    refused = run(elsewhere, "check-config", "--config", config)
    assert refused.returncode == 2
    assert re.search(
        r"is sealed under a pkcs11 KEK with check value [0-9a-f]{16}, but the configured "
        r"key-encryption key is pkcs11 KEK 'kek' on token label 'xks-kek' "
        r"\(check value [0-9a-f]{16}\) \(wrong kek\)",
        refused.stderr,
    ), refused.stderr
    # The file KEK it was sealed under before the rewrap opens nothing either.
    set_kek(deployment, "file:kek.key")
    refused = run(hsm, "check-config", "--config", config)
    assert refused.returncode == 2 and "is sealed under a pkcs11 KEK" in refused.stderr
    for done in (refused,):
        assert "Traceback" not in done.stderr and USER_PIN not in done.stderr + done.stdout


def test_a_row_copied_onto_another_key_or_version_does_not_unseal(
    tmp_path: Path, location: str
) -> None:
    hsm = kek_token(tmp_path / "hsm")
    deployment = make_deployment(tmp_path / "d", location)
    config = str(deployment.config_path)
    assert run(hsm, "keys", "rotate", "--config", config, "--key-id", KEY_BOTH).returncode == 0
    to_hsm(deployment, hsm)
    store = store_of(deployment)
    copy = (
        "UPDATE key_versions SET sealed = (SELECT sealed FROM key_versions "
        f"WHERE key_id = '{KEY_BOTH}' AND version = 1) WHERE key_id = '{{key}}' AND version = "
        "{version}"
    )

    execute_raw(store, copy.format(key=KEY_BOTH, version=2))
    refused = run(hsm, "check-config", "--config", config)
    assert refused.returncode == 2
    assert f"key {KEY_BOTH} version 2 does not decrypt" in refused.stderr, refused.stderr

    execute_raw(store, copy.format(key=KEY_ENCRYPT_ONLY, version=1))
    execute_raw(
        store, f"DELETE FROM key_versions WHERE key_id = '{KEY_BOTH}' AND version = 2"
    )  # the first copy no longer hides the second
    refused = run(hsm, "check-config", "--config", config)
    assert refused.returncode == 2
    assert f"key {KEY_ENCRYPT_ONLY} version 1 does not decrypt" in refused.stderr, refused.stderr


def test_wrong_pin_and_missing_label_are_one_clear_line(tmp_path: Path) -> None:
    hsm = kek_token(tmp_path / "hsm")
    deployment = make_deployment(tmp_path / "d", f"sqlite:{tmp_path / 'unused'}")
    to_hsm(deployment, hsm)
    config = str(deployment.config_path)

    wrong_pin = "0000-wrong-pin"
    served = subprocess.run(
        [XKS_PROXY, "serve", "--config", config, "--port", "0"], capture_output=True, text=True,
        timeout=60, check=False, env=hsm_env(hsm, wrong_pin),
    )  # fmt: skip
    assert served.returncode != 0
    assert "login to token label 'xks-kek' failed (check the PIN)" in served.stderr
    assert "Traceback" not in served.stderr and wrong_pin not in served.stderr

    set_kek(deployment, kek_uri(hsm, label="no-such-kek"))
    refused = run(hsm, "check-config", "--config", config)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert "the token has no key labelled 'no-such-kek'" in refused.stderr
    assert "pkcs11 create-kek" in refused.stderr

    unset = subprocess.run(
        [XKS_PROXY, "check-config", "--config", config], capture_output=True, text=True,
        timeout=60, check=False, env={"PATH": os.environ["PATH"], "SOFTHSM2_CONF": str(hsm.conf)},
    )  # fmt: skip
    assert unset.returncode == 2 and f"environment variable {PIN_ENV} is not set" in unset.stderr


KNOWN_KEK_SCRIPT = """
import sys
from pathlib import Path
from pkcs11 import Attribute as A, KeyType, ObjectClass
from xks_proxy.backends import pkcs11_library

library = pkcs11_library.load(Path(sys.argv[1]))
with library.get_token(token_label=sys.argv[2]).open(rw=True, user_pin=sys.argv[3]) as session:
    session.create_object({
        A.CLASS: ObjectClass.SECRET_KEY, A.KEY_TYPE: KeyType.AES, A.TOKEN: True,
        A.LABEL: "kek", A.VALUE: bytes.fromhex(sys.stdin.read()), A.WRAP: True, A.UNWRAP: True,
        A.EXTRACTABLE: True, A.SENSITIVE: False, A.PRIVATE: True,
    })
"""


def test_openssl_unwraps_a_stored_row_and_its_material_is_what_encrypts(tmp_path: Path) -> None:
    """A test KEK whose bytes are known (never how ``create-kek`` makes one) lets OpenSSL
    unwrap a row on its own: RFC 5649 over SHA-256(binding) || length || material."""
    hsm = kek_token(tmp_path / "hsm")
    known = os.urandom(32)
    subprocess.run(
        [sys.executable, "-c", KNOWN_KEK_SCRIPT, str(hsm.module), KEK_TOKEN, USER_PIN],
        input=known.hex(), text=True, check=True, timeout=60, env=hsm_env(hsm),
    )  # fmt: skip
    deployment = make_deployment(tmp_path / "d", f"sqlite:{tmp_path / 'unused'}")
    output = rewrap(deployment, hsm, kek_uri(hsm))
    set_kek(deployment, kek_uri(hsm))
    # The check value names the key bytes, wherever they live.
    assert f"under a pkcs11 KEK with check value {SoftwareKeySealer(known, '-').check_value()}" in (
        output
    )

    ((sealed,),) = read_raw(
        store_of(deployment),
        f"SELECT sealed FROM key_versions WHERE key_id = '{KEY_BOTH}' AND version = 1",
    )
    (tmp_path / "row.bin").write_bytes(sealed)
    subprocess.run(
        ["openssl", "enc", "-d", "-id-aes256-wrap-pad", "-K", known.hex(), "-iv", "A65959A6",
         "-in", str(tmp_path / "row.bin"), "-out", str(tmp_path / "payload.bin")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    payload = (tmp_path / "payload.bin").read_bytes()
    assert payload[:32] == hashlib.sha256(bound_aad(KEY_BOTH, 1)).digest()
    assert int.from_bytes(payload[32:36]) == 32 and payload[68:] == bytes(4)
    material = payload[36:68]

    proxy = Https(deployment, hsm, add_tls(deployment.config_path))
    try:
        encrypted = proxy.encrypt(KEY_BOTH, b"opened by openssl's unwrap")
    finally:
        proxy.stop()
    metadata = unb64(encrypted["ciphertextMetadata"])
    plaintext = AESGCM(material).decrypt(
        unb64(encrypted["initializationVector"]),
        unb64(encrypted["ciphertext"]) + unb64(encrypted["authenticationTag"]),
        ekm_aad(None, metadata),
    )
    assert plaintext == b"opened by openssl's unwrap"


def test_proxies_with_the_old_kek_serve_what_they_hold_and_say_why(tmp_path: Path) -> None:
    hsm = kek_token(tmp_path / "hsm")
    deployment = make_deployment(tmp_path / "d", f"sqlite:{tmp_path / 'unused'}")
    text = deployment.config_path.read_text().replace(
        "interval_seconds = 15", "interval_seconds = 1"
    )
    deployment.config_path.write_text(text)
    authority = add_tls(deployment.config_path)
    old = Https(deployment, hsm, authority)
    try:
        before = old.encrypt(KEY_BOTH, b"before the rewrap")
        assert old.health() == "ACTIVE"
        to_hsm(deployment, hsm)
        old.proxy.wait_for("is sealed under a pkcs11 KEK", timeout=10)
        deadline = time.monotonic() + 10
        while old.health() != "DEGRADED":
            assert time.monotonic() < deadline, "the old proxy never reported DEGRADED"
            time.sleep(0.2)
        # Cached and not yet unsealed keys alike: their rows in memory are the old ones.
        assert old.decrypt(KEY_BOTH, before) == b"before the rewrap"
        assert old.encrypt(KEY_ENCRYPT_ONLY, b"never used before")["ciphertext"]
        # Its writes are refused: nothing is sealed under a KEK the store no longer uses.
        old_config = deployment.config_path.with_name("old.toml")
        old_config.write_text(
            re.sub(r'^kek = ".*"$', 'kek = "file:kek.key"', deployment.config_path.read_text(),
                   count=1, flags=re.M)
        )  # fmt: skip
        refused = run(hsm, "keys", "create", "--config", str(old_config), "--key-id", "key-new")
        assert refused.returncode == 2 and "is sealed under a pkcs11 KEK" in refused.stderr
    finally:
        old.stop()
    new = Https(deployment, hsm, authority)
    try:
        assert new.decrypt(KEY_BOTH, before) == b"before the rewrap"
        assert new.health() == "ACTIVE"
    finally:
        new.stop()


def test_the_hsm_going_away_is_a_retryable_error_never_key_not_found(tmp_path: Path) -> None:
    hsm = kek_token(tmp_path / "hsm")
    deployment = make_deployment(tmp_path / "d", f"sqlite:{tmp_path / 'unused'}")
    text = deployment.config_path.read_text().replace(
        "interval_seconds = 15", "interval_seconds = 1"
    )
    deployment.config_path.write_text(text)
    to_hsm(deployment, hsm)
    authority = add_tls(deployment.config_path)
    proxy = Https(deployment, hsm, authority)
    try:
        cached = proxy.encrypt(KEY_BOTH, b"cached")
        away = hsm.remove_token()
        status, body = proxy.call(
            KEY_ENCRYPT_ONLY, "encrypt", encrypt_body(b"uncached", cdiv=False)
        )
        assert status == 500 and body["errorName"] == "InternalException", body
        assert proxy.decrypt(KEY_BOTH, cached) == b"cached"  # in memory: still served
        deadline = time.monotonic() + 10
        while proxy.health() != "DEGRADED":  # the next health check (every second) says so
            assert time.monotonic() < deadline, proxy.proxy.log
            time.sleep(0.2)
    finally:
        proxy.stop()
    assert "Traceback" not in proxy.proxy.log and "KeyNotFound" not in proxy.proxy.log
    # SoftHSM 2.6.1 rescans its token directory only when the module is initialised again,
    # which a process shared with a pkcs11 backend must not do under its sessions: restart.
    hsm.restore_token(away)
    proxy = Https(deployment, hsm, authority)
    try:
        assert proxy.encrypt(KEY_ENCRYPT_ONLY, b"back")["ciphertext"]
        assert proxy.health() == "ACTIVE"
    finally:
        proxy.stop()


class FailingSealer(SoftwareKeySealer):
    """A new KEK that fails on its ``fail_at``-th seal, as a process dying midway would stop."""

    def __init__(self, kek: bytes, fail_at: int) -> None:
        super().__init__(kek, "-")
        self.seals = 0
        self.fail_at = fail_at

    def _seal(self, plaintext: bytes, binding: bytes) -> SealedVersion:
        self.seals += 1
        if self.seals == self.fail_at:
            raise OSError("the machine went away")
        return super()._seal(plaintext, binding)


def test_a_rewrap_that_fails_midway_leaves_every_row_as_it_was(location: str) -> None:
    old_kek = os.urandom(32)
    database = KeyDatabase(location, old_kek)
    try:
        for index in range(5):
            database.create_key(f"k{index}", frozenset({"ENCRYPT", "DECRYPT"}))
        database.rotate_key("k2")
        before = {key.key_id: key.versions for key in database.load()}
        with pytest.raises(OSError, match="went away"):
            reseal_store(database, FailingSealer(os.urandom(32), fail_at=4))
        assert database.kek_check() == database.sealer.identity
    finally:
        database.close()
    reopened = KeyDatabase(location, old_kek)  # still sealed under the old KEK, every row
    try:
        assert {key.key_id: key.versions for key in reopened.load()} == before
        new_kek = os.urandom(32)
        result = reseal_store(reopened, SoftwareKeySealer(new_kek, "-"))
        assert (result.versions, result.secrets) == (6, 0)
    finally:
        reopened.close()
    rewrapped = KeyDatabase(location, new_kek)
    try:
        assert {key.key_id: key.versions for key in rewrapped.load()} == before
    finally:
        rewrapped.close()


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("pkcs11:token=t;object=k?module-path={module}&pin-value=1234", "pin-value is refused"),
        ("pkcs11:token=t?module-path={module}&pin-source=env:P", "object=LABEL"),
        ("pkcs11:object=k?module-path={module}&pin-source=env:P", "exactly one of token"),
        ("pkcs11:token=t;object=k?pin-source=env:P", "module-path="),
        ("pkcs11:token=t;object=k?module-path=/nowhere.so&pin-source=env:P", "is not a file"),
        ("pkcs11:token=t;object=k?module-path={module}", "pin-source=env:NAME"),
        ("pkcs11:token=t;object=k?module-path={module}&pin-source=env:UNSET_PIN", "not set"),
        ("pkcs11:token=t;object=k;colour=red?module-path={module}&pin-source=env:P", "'colour'"),
        ("pkcs11:token=t;object=k;type=private?module-path={module}&pin-source=env:P", "secret"),
    ],
)
def test_pkcs11_kek_uri_errors(tmp_path: Path, uri: str, expected: str) -> None:
    value = uri.format(module=find_module())
    with pytest.raises(ConfigError, match=re.escape(expected)) as raised:
        parse_kek_setting(value, "backends.local.kek", tmp_path, {"P": "s3cret-pin"})
    assert "1234" not in str(raised.value) and "s3cret-pin" not in str(raised.value)


def test_a_pkcs11_kek_uri_is_percent_decoded_and_its_pin_read_from_the_source(
    tmp_path: Path,
) -> None:
    (tmp_path / "pin").write_text("from-a-file\n")
    uri = (
        f"pkcs11:token=my%20token;object=kek%3Bv2;type=secret-key"
        f"?module-path={find_module()}&pin-source=file:pin"
    )
    kek = parse_kek_setting(uri, "kek", tmp_path, {})
    assert isinstance(kek, Pkcs11Kek)
    assert (kek.token.label, kek.label, kek.pin) == ("my token", "kek;v2", "from-a-file")
    assert "from-a-file" not in repr(kek) and "from-a-file" not in str(kek)


def write_locked(path: Path) -> bool:
    """Whether another process holds the SQLite file's write lock (is inside a write)."""
    import sqlite3

    db = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        db.close()


def test_a_rewrap_killed_midway_leaves_one_kek_for_every_row(tmp_path: Path) -> None:
    """SIGKILL while ``keys rewrap`` reseals 2,000 versions into the HSM: whatever the moment,
    every row unseals under the KEK the store records, and nothing under the other."""
    hsm = kek_token(tmp_path / "hsm")
    deployment = make_deployment(tmp_path / "d", f"sqlite:{tmp_path / 'unused'}")
    old_kek = base64.b64decode((deployment.directory / "kek.key").read_text())
    database = KeyDatabase(store_of(deployment), old_kek)
    try:
        sealer = database.sealer
        records = [
            KeyRecord(f"bulk-{n}", frozenset({"ENCRYPT"}), True, False, "2026-01-01",
                      {1: sealer.seal(f"bulk-{n}", 1, os.urandom(32))})
            for n in range(2000)
        ]  # fmt: skip
        database.copy_records(records)
        old_identity = database.sealer.identity
    finally:
        database.close()
    assert run(hsm, "pkcs11", "create-kek", "--kek", kek_uri(hsm)).returncode == 0
    rewrapping = subprocess.Popen(
        [XKS_PROXY, "keys", "rewrap", "--config", str(deployment.config_path),
         "--new-kek", kek_uri(hsm)],
        env=hsm_env(hsm), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    # Kill it inside its resealing transaction: once it has held the store's write lock for
    # 100 ms (opening the store takes the lock for a few milliseconds to check the schema).
    deadline = time.monotonic() + 60
    locked_polls = 0
    while locked_polls < 5:
        locked_polls = locked_polls + 1 if write_locked(deployment.directory / "keys.db") else 0
        assert rewrapping.poll() is None, rewrapping.communicate()
        assert time.monotonic() < deadline, "the rewrap never started writing"
        time.sleep(0.02)
    rewrapping.kill()
    rewrapping.communicate(timeout=60)

    recorded = read_raw(store_of(deployment), "SELECT kek_check FROM store_meta")[0][0]
    rows = read_raw(store_of(deployment), "SELECT nonce FROM key_versions")
    if recorded == old_identity:
        assert all(len(nonce) == 12 for (nonce,) in rows)  # every row AES-GCM, as before
        assert run(hsm, "check-config", "--config", str(deployment.config_path)).returncode == 0
    else:
        assert recorded.startswith("pkcs11:")  # it committed just before the kill
        assert all(len(nonce) == 0 for (nonce,) in rows)  # every row wrapped by the token
        set_kek(deployment, kek_uri(hsm))
        assert run(hsm, "check-config", "--config", str(deployment.config_path)).returncode == 0


def test_init_seals_a_new_store_under_an_hsm_kek_it_makes(tmp_path: Path) -> None:
    hsm = kek_token(tmp_path / "hsm")
    refused = run(hsm, "init", str(tmp_path / "d"), "--kek", kek_uri(hsm), pin="0000-wrong")
    assert refused.returncode == 2 and "login to token label 'xks-kek' failed" in refused.stderr
    assert not (tmp_path / "d").exists()  # nothing written

    made = run(hsm, "init", str(tmp_path / "d"), "--kek", kek_uri(hsm), "--key-id", KEY_BOTH)
    assert made.returncode == 0, made.stderr
    assert "under pkcs11 KEK 'kek' on token label 'xks-kek'" in made.stdout
    assert not (tmp_path / "d" / "kek.key").exists()
    config = tmp_path / "d" / "xks-proxy.toml"
    assert f'kek = "{kek_uri(hsm)}"' in config.read_text()
    assert run(hsm, "check-config", "--config", str(config)).returncode == 0
    ((recorded,),) = read_raw(
        f"sqlite:{tmp_path / 'd' / 'keys.db'}", "SELECT kek_check FROM store_meta"
    )
    assert recorded.startswith("pkcs11:")


def test_store_secrets_are_rewrapped_too_and_byok_works_under_the_hsm_kek(
    tmp_path: Path, location: str
) -> None:
    """A pending import (its RSA wrapping key and the token-signing key, both sealed store
    secrets) made under the file KEK completes under the HSM KEK after the rewrap."""
    hsm = kek_token(tmp_path / "hsm")
    deployment = make_deployment(tmp_path / "d", location)
    config = str(deployment.config_path)
    out = tmp_path / "import"
    for args in (
        ("create", "--key-id", "byok-1", "--origin", "external"),
        ("import-parameters", "--key-id", "byok-1", "--wrapping-algorithm",
         "RSAES_OAEP_SHA_256", "--out", str(out)),
    ):  # fmt: skip
        done = run(hsm, "keys", *args, "--config", config)
        assert done.returncode == 0, done.stderr
    assert "and 2 store secrets" in to_hsm(deployment, hsm)
    rows = read_raw(store_of(deployment), "SELECT nonce FROM import_secrets")
    assert len(rows) == 2 and all(len(nonce) == 0 for (nonce,) in rows)

    material = os.urandom(32)
    wrapped = wrap(out / "wrapping-key.pem", material, "RSAES_OAEP_SHA_256", out)
    token = str(out / "import-token")
    imported = run(hsm, "keys", "import", "--config", config, "--key-id", "byok-1",
                   "--material", str(wrapped), "--import-token", token)  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    assert run(hsm, "check-config", "--config", config).returncode == 0


def test_credentials_kept_in_the_store_are_rewrapped_too(tmp_path: Path, location: str) -> None:
    """``credentials_store = "database"`` secrets are sealed store secrets: after a rewrap to the
    HSM they are sealed by the token (no nonce) and ``check-config`` unseals every one."""
    hsm = kek_token(tmp_path / "hsm")
    deployment = make_deployment(tmp_path / "d", location)
    database_credentials(deployment)
    config = str(deployment.config_path)
    made = run(hsm, "credentials", "create", "--config", config)
    assert made.returncode == 0, made.stderr

    assert "and 2 store secrets" in to_hsm(deployment, hsm)
    rows = read_raw(store_of(deployment), "SELECT nonce FROM credentials")
    assert len(rows) == 2 and all(len(nonce) == 0 for (nonce,) in rows)
    checked = run(hsm, "check-config", "--config", config)
    assert checked.returncode == 0, checked.stderr
    assert "2 credential(s)" in checked.stdout
