"""Rotation of HSM keys (issue 12): versions ``<key id>#<n>`` on real SoftHSM2 tokens, used by
real ``xks-proxy serve`` processes over HTTPS and made by the real ``keys rotate`` command."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams

from tests.conftest import (
    CONFORMANCE_TOKEN,
    Deployment,
    lifecycle_audit_lines,
    make_pkcs11_deployment,
)
from tests.proxy_process import XKS_PROXY, ProxyProcess, add_tls, close_all, connect, post
from tests.softhsm import USER_PIN, SoftHsm, make_softhsm
from tests.test_admin_api import STORE, call, token, trust_test_issuer
from tests.xks_client import METADATA_BODY, XksClient, b64, decrypt_body, encrypt_body, unb64
from xks_proxy.admin.api import create_admin_app
from xks_proxy.admin.settings import build_guard
from xks_proxy.backends import pkcs11_library
from xks_proxy.backends.pkcs11_keys import VERSION_RESCAN_SECONDS
from xks_proxy.backends.pkcs11_versions import parse_version_name, version_name
from xks_proxy.config import Pkcs11BackendConfig, load_config
from xks_proxy.keymgmt.audit import LifecycleAudit
from xks_proxy.keymgmt.hsm import TokenKeys, TokenUnavailableError
from xks_proxy.keymgmt.service import KeyManager
from xks_proxy.keystore.records import KeyStateError, UnknownKeyError
from xks_proxy.pkcs11_admin import create_key, rotate_key
from xks_proxy.runtime import ProxyRuntime
from xks_proxy.sigv4 import Credential
from xks_proxy.web.app import create_app

BOTH = frozenset({"ENCRYPT", "DECRYPT"})
# xks-spec §7.3: KMS retries only these; a lost token is never the caller's mistake.
RETRYABLE = {"InternalException", "DependencyTimeoutException"}
# Every proxy must encrypt under a new version within VERSION_RESCAN_SECONDS; this bounds a hang.
PICK_UP_BOUND = VERSION_RESCAN_SECONDS + 5


def fresh_key_id() -> str:
    """A key of this test alone on the shared conformance token (the store serves ``key-*``)."""
    return f"key-rot-{secrets.token_hex(4)}"


def metadata_version(encrypted: dict[str, Any]) -> int:
    """The version in the proxy's ciphertextMetadata, read by hand from the documented layout
    (``u8 format=1 || u8 aad scheme=1 || u32be version``, xks_proxy/aad.py)."""
    raw = unb64(encrypted["ciphertextMetadata"])
    assert len(raw) == 6 and raw[:2] == b"\x01\x01", raw
    return int.from_bytes(raw[2:], "big")


def with_version(encrypted: dict[str, Any], version: int) -> dict[str, Any]:
    metadata = b"\x01\x01" + version.to_bytes(4, "big")
    return {**encrypted, "ciphertextMetadata": b64(metadata)}


@dataclass
class HttpsProxy:
    """``xks-proxy serve`` with TLS, spoken to as KMS would."""

    proxy: ProxyProcess
    context: ssl.SSLContext
    credential: Credential

    def call(self, operation: str, key_id: str, body: dict[str, Any]) -> tuple[int, Any]:
        path = f"/keystores/dev/kms/xks/v1/keys/{key_id}/{operation}"
        return post(connect(self.proxy.port, self.context), path, body, self.credential)

    def encrypt(self, key_id: str, plaintext: bytes, aad: bytes = b"ctx") -> dict[str, Any]:
        status, encrypted = self.call("encrypt", key_id, encrypt_body(plaintext, aad))
        assert status == 200, encrypted
        return dict(encrypted)

    def decrypts(self, key_id: str, encrypted: dict[str, Any], aad: bytes = b"ctx") -> bytes:
        status, decrypted = self.call("decrypt", key_id, decrypt_body(encrypted, aad))
        assert status == 200, decrypted
        return unb64(decrypted["plaintext"])

    def encrypt_until_version(self, key_id: str, version: int) -> dict[str, Any]:
        """Encrypt until the proxy uses ``version``; fails after ``PICK_UP_BOUND`` seconds."""
        deadline = time.monotonic() + PICK_UP_BOUND
        while True:
            encrypted = self.encrypt(key_id, b"v%d" % version)
            if metadata_version(encrypted) == version:
                return encrypted
            assert time.monotonic() < deadline, f"still version {metadata_version(encrypted)}"
            time.sleep(0.1)


def https_deployment(directory: Path, hsm: SoftHsm) -> tuple[Deployment, ssl.SSLContext]:
    deployment = make_pkcs11_deployment(directory, hsm)
    authority = add_tls(deployment.config_path)
    context = ssl.create_default_context()
    authority.configure_trust(context)
    return Deployment(directory, load_config(deployment.config_path)), context


@contextlib.contextmanager
def serving(
    deployment: Deployment, context: ssl.SSLContext, softhsm_conf: Path | None = None
) -> Iterator[HttpsProxy]:
    """The proxy of ``deployment``; ``softhsm_conf``: a SoftHSM of the test's own."""
    credential = deployment.config.key_stores[0].credentials[0]
    saved = os.environ.get("SOFTHSM2_CONF")
    if softhsm_conf is not None:
        os.environ["SOFTHSM2_CONF"] = str(softhsm_conf)  # inherited by the proxy process
    try:
        proxy = ProxyProcess(deployment.config_path)
    finally:
        if saved is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = saved
    try:
        with proxy:
            yield HttpsProxy(proxy, context, credential)
            assert proxy.stop() == 0
            assert USER_PIN not in proxy.log
    finally:
        close_all()


def cli(deployment: Deployment, *args: str, expect: int = 0, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    result = subprocess.run(
        [XKS_PROXY, *args, "--config", str(deployment.config_path)],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == expect, result.stderr
    assert "Traceback" not in result.stderr
    assert USER_PIN not in result.stdout + result.stderr
    return result


def hsm_config(hsm: SoftHsm) -> Pkcs11BackendConfig:
    return hsm.backend_config(CONFORMANCE_TOKEN)


def pre_rotation_ciphertext(hsm: SoftHsm, key_id: str, plaintext: bytes, aad: bytes
                            ) -> dict[str, Any]:  # fmt: skip
    """What the PKCS#11 backend made before keys had versions, made here without the proxy:
    AES-GCM with python-pkcs11's own parameters on the object labelled ``key_id``, the
    ciphertextMetadata those releases wrote (format 1, AAD scheme 1, version 1) and the spec's
    EKM_AAD written out by hand (xks-spec §5.2)."""
    metadata = bytes.fromhex("010100000001")
    ekm_aad = len(aad).to_bytes(2, "big") + aad + bytes([len(metadata)]) + metadata
    iv = os.urandom(12)
    library = pkcs11_library.load(hsm.module)
    with library.get_token(token_label=CONFORMANCE_TOKEN).open(user_pin=USER_PIN) as session:
        key: Any = session.get_key(object_class=ObjectClass.SECRET_KEY, label=key_id)
        sealed = key.encrypt(plaintext, mechanism=Mechanism.AES_GCM,
                             mechanism_param=GCMParams(iv, ekm_aad))  # fmt: skip
    return {
        "ciphertext": b64(sealed[:-16]),
        "initializationVector": b64(iv),
        "authenticationTag": b64(sealed[-16:]),
        "ciphertextMetadata": b64(metadata),
    }


def test_version_names() -> None:
    assert version_name("k", 1) == "k" and version_name("k", 12) == "k#12"
    assert parse_version_name("k") == ("k", 1) and parse_version_name("k#12") == ("k", 12)
    for invalid in ("k#", "k#1", "k#0", "k#02", "k#x", "k#2~ab12", "k#-3"):
        assert parse_version_name(invalid) is None, invalid


def test_cli_rotations_reach_running_proxies_and_every_version_decrypts(
    tmp_path: Path, softhsm: SoftHsm
) -> None:
    key_id = fresh_key_id()
    create_key(hsm_config(softhsm), hsm_config(softhsm).tokens[0], key_id, BOTH)
    before = pre_rotation_ciphertext(softhsm, key_id, b"made before versions", b"ctx")
    deployment, context = https_deployment(tmp_path / "host-1", softhsm)
    # Two proxies (two hosts' deployments) on one token, as a fleet would be: each must take
    # up a rotation made by neither of them.
    other, other_context = https_deployment(tmp_path / "host-2", softhsm)
    with serving(deployment, context) as first, serving(other, other_context) as second:
        assert first.decrypts(key_id, before) == b"made before versions"
        v1 = first.encrypt(key_id, b"one")
        assert metadata_version(v1) == 1 and metadata_version(second.encrypt(key_id, b"x")) == 1

        rotated = cli(deployment, "keys", "rotate", "--key-id", key_id)
        assert f"key {key_id} now encrypts with version 2" in rotated.stdout
        v2 = first.encrypt_until_version(key_id, 2)
        second.encrypt_until_version(key_id, 2)
        cli(deployment, "keys", "rotate", "--key-id", key_id)
        v3 = second.encrypt_until_version(key_id, 3)
        assert metadata_version(first.encrypt_until_version(key_id, 3)) == 3

        for proxy in (first, second):
            assert proxy.decrypts(key_id, before) == b"made before versions"
            assert proxy.decrypts(key_id, v1) == b"one"
            assert proxy.decrypts(key_id, v2) == b"v2"
            assert proxy.decrypts(key_id, v3) == b"v3"
        # GetKeyMetadata is that of the key, whatever its versions.
        status, metadata = first.call("metadata", key_id, METADATA_BODY)
        assert (status, metadata["keySpec"], metadata["keyStatus"]) == (200, "AES_256", "ENABLED")

        # Tampered versions: the metadata is under the tag, and a version the key lacks is a
        # ciphertext that cannot decrypt (xks-spec §4.3, §7.2), not a missing key.
        for tampered in (with_version(v2, 1), with_version(v2, 3), with_version(v2, 4),
                         with_version(v2, 0), with_version(v2, 2**32 - 1)):  # fmt: skip
            status, error = first.call("decrypt", key_id, decrypt_body(tampered, b"ctx"))
            assert (status, error["errorName"]) == (400, "InvalidCiphertextException"), error
        unparsable = {**v2, "ciphertextMetadata": b64(b"key_version=2")}
        status, error = first.call("decrypt", key_id, decrypt_body(unparsable, b"ctx"))
        assert (status, error["errorName"]) == (400, "InvalidCiphertextException")

    listed = cli(deployment, "keys", "list").stdout
    assert f"{key_id}  ENABLED  DECRYPT,ENCRYPT  v3  hsm" in listed
    assert "key-disabled  DISABLED" in listed  # the key store's kill switch
    assert "#" not in listed and "xks-proxy-health" not in listed
    on_token = cli(deployment, "pkcs11", "list-keys").stdout
    for version in (2, 3):
        assert f"{key_id}#{version}  AES-256  ENCRYPT,DECRYPT" in on_token
    audit_log = deployment.directory / "audit.log"
    audit = [a for a in lifecycle_audit_lines(audit_log) if a["keyId"] == key_id]
    assert [(a["action"], a["outcome"]) for a in audit] == [("rotate", "success")] * 2
    assert USER_PIN not in audit_log.read_text()


def test_new_versions_are_made_like_create_key(tmp_path: Path, softhsm: SoftHsm) -> None:
    config = hsm_config(softhsm)
    key_id = fresh_key_id()
    create_key(config, config.tokens[0], key_id, frozenset({"ENCRYPT"}))
    assert rotate_key(config, config.tokens[0], key_id) == 2
    library = pkcs11_library.load(softhsm.module)
    with library.get_token(token_label=CONFORMANCE_TOKEN).open(user_pin=USER_PIN) as session:
        made = session.get_key(object_class=ObjectClass.SECRET_KEY, label=f"{key_id}#2")
        assert made[Attribute.ID] == f"{key_id}#2".encode()
        assert (made[Attribute.KEY_TYPE], made[Attribute.VALUE_LEN]) == (KeyType.AES, 32)
        assert made[Attribute.TOKEN] and made[Attribute.PRIVATE] and made[Attribute.SENSITIVE]
        assert not made[Attribute.EXTRACTABLE]
        # Version 1's usage: an encrypt-only key stays encrypt-only.
        assert made[Attribute.ENCRYPT] and not made[Attribute.DECRYPT]
        for attribute in (Attribute.WRAP, Attribute.UNWRAP, Attribute.SIGN, Attribute.DERIVE):
            assert not made[attribute]
    with pytest.raises(UnknownKeyError):
        rotate_key(config, config.tokens[0], "key-never-made")
    with pytest.raises(KeyStateError, match="AES-256"):
        rotate_key(config, config.tokens[0], "key-aes-128")
    with pytest.raises(KeyStateError, match="health"):
        rotate_key(config, config.tokens[0], config.health_key_label)


def test_a_rotation_racing_another_changes_nothing(softhsm: SoftHsm) -> None:
    """Another host's rotation is making version 2 (its object not yet renamed): this one must
    leave no second version 2 behind, nor its own object."""
    config = hsm_config(softhsm)
    key_id = fresh_key_id()
    create_key(config, config.tokens[0], key_id, BOTH)
    library = pkcs11_library.load(softhsm.module)
    with library.get_token(token_label=CONFORMANCE_TOKEN).open(rw=True, user_pin=USER_PIN) as s:
        s.generate_key(KeyType.AES, 256, label=f"{key_id}#2~0123456789abcdef", store=True)

        def labels() -> list[str]:
            found = s.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})
            return sorted(str(k[Attribute.LABEL]) for k in found
                          if str(k[Attribute.LABEL]).startswith(key_id))  # fmt: skip

        before = labels()
        with pytest.raises(KeyStateError, match="another rotation"):
            rotate_key(config, config.tokens[0], key_id)
        assert labels() == before
        with pytest.raises(p11.NoSuchKey):
            s.get_key(object_class=ObjectClass.SECRET_KEY, label=f"{key_id}#2")


def test_a_token_without_its_health_key_is_not_a_missing_key(softhsm: SoftHsm) -> None:
    """A token whose objects all vanished also lost the health key: then "no such key" is the
    token's failure (KeyStoreUnavailable: CLI exit 1, admin API 503), not the key's."""
    vanished = TokenKeys(softhsm.backend_config(CONFORMANCE_TOKEN, health_key_label="gone"))
    with pytest.raises(TokenUnavailableError, match="the token failed"):
        vanished.rotate_key("key-never-made")
    with pytest.raises(TokenUnavailableError):
        vanished.records()
    with pytest.raises(UnknownKeyError):
        TokenKeys(hsm_config(softhsm)).rotate_key("key-never-made")


def test_refused_lifecycle_actions_on_hsm_keys_are_audited(tmp_path: Path, softhsm: SoftHsm
                                                           ) -> None:  # fmt: skip
    deployment = make_pkcs11_deployment(tmp_path, softhsm)
    config = deployment.config
    backend = config.backends["hsm"]
    assert isinstance(backend, Pkcs11BackendConfig)
    keys = KeyManager(TokenKeys(backend), LifecycleAudit(config.audit), "tester")
    with pytest.raises(KeyStateError, match="disabled_keys"):
        keys.disable("key-both")
    with pytest.raises(UnknownKeyError):
        keys.rotate("key-never-made")
    audit = lifecycle_audit_lines(tmp_path / "audit.log")
    assert [(a["action"], a["outcome"]) for a in audit] == [
        ("disable", "refused"), ("rotate", "refused")
    ]  # fmt: skip
    refused = cli(deployment, "keys", "schedule-deletion", "--key-id", "key-both", expect=1)
    assert "not available for HSM keys" in refused.stderr


def test_token_loss_with_versions_is_never_a_client_error(tmp_path: Path) -> None:
    """Finding 3 of issue 9 with versions: with the token gone, a version lookup finds nothing,
    which must read neither as "no such key" nor as "bad ciphertext" (both permanent for KMS)."""
    hsm = make_softhsm(tmp_path / "hsm")  # its own token, since this test takes it away
    hsm.init_token(CONFORMANCE_TOKEN)
    environment = {**os.environ, "SOFTHSM2_CONF": str(hsm.conf)}
    deployment, context = https_deployment(tmp_path / "dep", hsm)
    text = deployment.config_path.read_text()
    deployment.config_path.write_text(text.replace("interval_seconds = 15", "interval_seconds = 1"))
    key_id = "key-both"
    cli(deployment, "pkcs11", "create-key", "--health", env=environment)
    cli(deployment, "pkcs11", "create-key", "--label", key_id, env=environment)
    cli(deployment, "keys", "rotate", "--key-id", key_id, env=environment)
    with serving(deployment, context, hsm.conf) as proxy:
        kept = proxy.encrypt(key_id, b"kept")
        assert metadata_version(kept) == 2
        unknown_version = decrypt_body(with_version(kept, 7), b"ctx")
        status, error = proxy.call("decrypt", key_id, unknown_version)
        assert (status, error["errorName"]) == (400, "InvalidCiphertextException")

        away = hsm.remove_token()
        answers = [
            proxy.call("decrypt", key_id, unknown_version),
            proxy.call("decrypt", key_id, decrypt_body(kept, b"ctx")),
            proxy.call("encrypt", key_id, encrypt_body(b"x", b"ctx")),
            proxy.call("metadata", key_id, METADATA_BODY),
            proxy.call("decrypt", key_id, unknown_version),
        ]
        for status, answer in answers:
            assert status == 200 or answer["errorName"] in RETRYABLE, answers
        assert answers[0][0] == answers[-1][0] == 500, "version 7 can never decrypt"
        rotation = cli(deployment, "keys", "rotate", "--key-id", key_id, env=environment, expect=2)
        assert "no token" in rotation.stderr and "no key" not in rotation.stderr

        hsm.restore_token(away)
        deadline = time.monotonic() + 60
        while proxy.call("decrypt", key_id, decrypt_body(kept, b"ctx"))[0] != 200:
            assert time.monotonic() < deadline, proxy.proxy.log
            time.sleep(0.3)
        assert proxy.decrypts(key_id, kept) == b"kept"
        assert metadata_version(proxy.encrypt(key_id, b"after")) == 2


async def encrypt_until_version(xks: XksClient, key_id: str, version: int) -> dict[str, Any]:
    """Encrypt b"2" through an in-process proxy until it uses ``version`` (bounded)."""
    deadline = time.monotonic() + PICK_UP_BOUND
    while True:
        encrypted = await xks.call("encrypt", key_id, encrypt_body(b"2", b"ctx"))
        if metadata_version(encrypted) == version:
            return encrypted
        assert time.monotonic() < deadline, f"the backend never encrypted under v{version}"
        await asyncio.sleep(0.1)


async def in_process_xks(deployment: Deployment, aiohttp_client: Any) -> XksClient:
    store = deployment.config.key_stores[0]
    app = create_app(ProxyRuntime(deployment.config))
    return XksClient(await aiohttp_client(app), store.uri_path, store.region,
                     store.credentials[0])  # fmt: skip


async def test_rotation_with_keys_found_by_cka_id(
    tmp_path: Path, softhsm: SoftHsm, aiohttp_client: Any
) -> None:
    deployment = make_pkcs11_deployment(tmp_path, softhsm, key_lookup="id")
    backend = deployment.config.backends["hsm"]
    assert isinstance(backend, Pkcs11BackendConfig)
    key_id = fresh_key_id()
    create_key(backend, backend.tokens[0], key_id, BOTH)
    xks = await in_process_xks(deployment, aiohttp_client)
    one = await xks.call("encrypt", key_id, encrypt_body(b"one", b"ctx"))
    manager = KeyManager(TokenKeys(backend), LifecycleAudit(deployment.config.audit), "tester")
    assert manager.rotate(key_id) == 2
    listed = [list(k.versions) for k in manager.keys() if k.key_id == key_id]  # noqa: SIM118 (a method)
    assert listed == [[1, 2]]
    two = await encrypt_until_version(xks, key_id, 2)
    for encrypted, plaintext in ((one, b"one"), (two, b"2")):
        decrypted = await xks.call("decrypt", key_id, decrypt_body(encrypted, b"ctx"))
        assert unb64(decrypted["plaintext"]) == plaintext


async def test_rotation_through_the_admin_api(
    tmp_path: Path, softhsm: SoftHsm, aiohttp_client: Any
) -> None:
    """The admin API rotates HSM keys with the CLI's service, inside a running proxy whose
    backend stays logged in to the token (the rotation must not log the process out)."""
    deployment = trust_test_issuer(make_pkcs11_deployment(tmp_path, softhsm))
    config = deployment.config
    assert config.admin.auth is not None
    admin = await aiohttp_client(create_admin_app(config, build_guard(config.admin.auth)))
    key_id = fresh_key_id()
    create_key(hsm_config(softhsm), hsm_config(softhsm).tokens[0], key_id, BOTH)
    xks = await in_process_xks(deployment, aiohttp_client)
    one = await xks.call("encrypt", key_id, encrypt_body(b"one", b"ctx"))
    assert metadata_version(one) == 1

    status, rotated = await call(admin, "POST", f"{STORE}/keys/{key_id}/rotate", token("key-admin"))
    assert (status, rotated["versions"], rotated["origin"]) == (200, 2, "hsm"), rotated
    two = await encrypt_until_version(xks, key_id, 2)
    for encrypted, plaintext in ((one, b"one"), (two, b"2")):
        decrypted = await xks.call("decrypt", key_id, decrypt_body(encrypted, b"ctx"))
        assert unb64(decrypted["plaintext"]) == plaintext

    status, listed = await call(admin, "GET", STORE + "/keys", token("viewer"))
    row = next(k for k in listed["keys"] if k["keyId"] == key_id)
    assert (status, row["versions"], row["keyStatus"]) == (200, 2, "ENABLED")
    status, refused = await call(admin, "POST", f"{STORE}/keys/{key_id}/disable", token("operator"))
    assert status == 409 and "disabled_keys" in refused["message"]
    status, _ = await call(admin, "POST", f"{STORE}/keys/key-never-made/rotate", token("key-admin"))
    assert status == 404
    audit = [a for a in lifecycle_audit_lines(tmp_path / "audit.log") if a["keyId"] == key_id]
    assert [(a["action"], a["outcome"]) for a in audit] == [
        ("rotate", "success"), ("disable", "refused")
    ]  # fmt: skip
