"""The KMS emulator end to end: boto3 and the aws CLI → emulator → XKS proxy (software keys)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import KEY_BOTH, KEY_DECRYPT_ONLY, KEY_DISABLED, Deployment, make_deployment
from tests.kms_emulator_helpers import REGION, Emulator, code, start_emulator, stop
from tests.proxy_process import XKS_PROXY, ProxyProcess


@dataclass
class Setup:
    deployment: Deployment
    proxy: ProxyProcess
    emulator: Emulator
    kms: Any
    store_id: str


def create_store(
    kms: Any,
    deployment: Deployment,
    port: int,
    name: str = "dev",
    uri_path: str | None = None,
    host: str = "127.0.0.1",
) -> str:
    store = deployment.config.key_stores[0]
    credential = store.credentials[0]
    return str(kms.create_custom_key_store(
        CustomKeyStoreName=name, CustomKeyStoreType="EXTERNAL_KEY_STORE",
        XksProxyUriEndpoint=f"http://{host}:{port}", XksProxyUriPath=uri_path or store.uri_path,
        XksProxyAuthenticationCredential={"AccessKeyId": credential.access_key_id,
                                          "RawSecretAccessKey": credential.secret_access_key},
        XksProxyConnectivity="PUBLIC_ENDPOINT",
    )["CustomKeyStoreId"])  # fmt: skip


def wait_state(kms: Any, store_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        store = kms.describe_custom_key_stores(CustomKeyStoreId=store_id)["CustomKeyStores"][0]
        if store["ConnectionState"] not in ("CONNECTING", "DISCONNECTING"):
            return dict(store)
        assert time.monotonic() < deadline
        time.sleep(0.05)


def connected_store(kms: Any, deployment: Deployment, port: int) -> str:
    store_id = create_store(kms, deployment, port)
    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    assert wait_state(kms, store_id)["ConnectionState"] == "CONNECTED"
    return store_id


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    deployment = make_deployment(tmp_path / "proxy")
    with ProxyProcess(deployment.config_path) as proxy:
        emulator = start_emulator(tmp_path / "kms.db")
        try:
            kms = emulator.client()
            store_id = connected_store(kms, deployment, proxy.port)
            yield Setup(deployment, proxy, emulator, kms, store_id)
        finally:
            stop(emulator)


def xks_key(setup: Setup, xks_key_id: str = KEY_BOTH) -> str:
    created = setup.kms.create_key(Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=setup.store_id,
                                   XksKeyId=xks_key_id, Description="xks")  # fmt: skip
    return str(created["KeyMetadata"]["KeyId"])


def test_key_store_lifecycle_and_key_metadata(setup: Setup) -> None:
    kms = setup.kms
    store = kms.describe_custom_key_stores(CustomKeyStoreName="dev")["CustomKeyStores"][0]
    assert store["XksProxyConfiguration"]["UriPath"] == "/keystores/dev/kms/xks/v1"
    assert store["CustomKeyStoreType"] == "EXTERNAL_KEY_STORE"
    key_id = xks_key(setup)
    metadata = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert metadata["Origin"] == "EXTERNAL_KEY_STORE"
    assert metadata["XksKeyConfiguration"] == {"Id": KEY_BOTH}
    assert metadata["KeyState"] == "Enabled" and metadata["KeySpec"] == "SYMMETRIC_DEFAULT"
    assert key_id in [k["KeyId"] for k in kms.list_keys()["Keys"]]
    with pytest.raises(ClientError) as same_key:
        xks_key(setup)
    assert code(same_key) == "XksKeyAlreadyInUseException"
    with pytest.raises(ClientError) as in_use:
        kms.delete_custom_key_store(CustomKeyStoreId=setup.store_id)
    assert code(in_use) == "CustomKeyStoreInvalidStateException"
    west = setup.emulator.client(region="eu-west-1")  # key stores belong to their region
    with pytest.raises(ClientError) as elsewhere:
        west.describe_custom_key_stores(CustomKeyStoreId=setup.store_id)
    assert code(elsewhere) == "CustomKeyStoreNotFoundException"
    assert west.describe_custom_key_stores()["CustomKeyStores"] == []
    kms.disconnect_custom_key_store(CustomKeyStoreId=setup.store_id)
    assert wait_state(kms, setup.store_id)["ConnectionState"] == "DISCONNECTED"
    with pytest.raises(ClientError) as twice:
        kms.disconnect_custom_key_store(CustomKeyStoreId=setup.store_id)
    assert code(twice) == "CustomKeyStoreInvalidStateException"
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Unavailable"
    with pytest.raises(ClientError) as disconnected:
        kms.encrypt(KeyId=key_id, Plaintext=b"x")
    assert code(disconnected) == "KMSInvalidStateException"
    assert "not connected" in disconnected.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as has_keys:
        kms.delete_custom_key_store(CustomKeyStoreId=setup.store_id)
    assert code(has_keys) == "CustomKeyStoreHasCMKsException"


def test_crypto_operations_through_the_proxy(setup: Setup) -> None:
    kms = setup.kms
    key_id = xks_key(setup)
    context = {"purpose": "test", "team": "payments"}
    encrypted = kms.encrypt(KeyId=key_id, Plaintext=b"secret message", EncryptionContext=context)
    blob = encrypted["CiphertextBlob"]
    decrypted = kms.decrypt(CiphertextBlob=blob, EncryptionContext=context)
    assert decrypted["Plaintext"] == b"secret message" and decrypted["KeyId"].endswith(key_id)
    with pytest.raises(ClientError) as wrong_context:
        kms.decrypt(CiphertextBlob=blob, EncryptionContext={"purpose": "other"})
    assert code(wrong_context) == "KMSInvalidStateException"
    assert "encryption context is corrupted" in wrong_context.value.response["Error"]["Message"]
    local = kms.create_key(Description="local")["KeyMetadata"]["KeyId"]
    moved = kms.re_encrypt(CiphertextBlob=blob, SourceEncryptionContext=context,
                           DestinationKeyId=local)  # fmt: skip
    assert kms.decrypt(CiphertextBlob=moved["CiphertextBlob"])["Plaintext"] == b"secret message"
    back = kms.re_encrypt(CiphertextBlob=moved["CiphertextBlob"], DestinationKeyId=key_id)
    assert kms.decrypt(CiphertextBlob=back["CiphertextBlob"])["Plaintext"] == b"secret message"
    with pytest.raises(ClientError) as too_big:
        kms.encrypt(KeyId=key_id, Plaintext=b"x" * 4097)
    assert code(too_big) == "ValidationException"
    assert len(kms.generate_random(NumberOfBytes=64)["Plaintext"]) == 64


def test_envelope_encryption_with_a_data_key(setup: Setup, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    kms = setup.kms
    key_id = xks_key(setup)
    kms.create_alias(AliasName="alias/files", TargetKeyId=key_id)
    data_key = kms.generate_data_key(KeyId="alias/files", KeySpec="AES_256",
                                     EncryptionContext={"file": "report.txt"})  # fmt: skip
    assert len(data_key["Plaintext"]) == 32
    nonce = os.urandom(12)
    sealed = AESGCM(data_key["Plaintext"]).encrypt(nonce, b"quarterly numbers", None)
    encrypted_key = data_key["CiphertextBlob"]
    (tmp_path / "report.enc").write_bytes(
        len(encrypted_key).to_bytes(2, "big") + encrypted_key + nonce + sealed
    )
    del data_key
    stored = (tmp_path / "report.enc").read_bytes()
    length = int.from_bytes(stored[:2], "big")
    stored_key, rest = stored[2 : 2 + length], stored[2 + length :]
    plaintext_key = kms.decrypt(CiphertextBlob=stored_key,
                                EncryptionContext={"file": "report.txt"})["Plaintext"]  # fmt: skip
    assert AESGCM(plaintext_key).decrypt(rest[:12], rest[12:], None) == b"quarterly numbers"
    without = kms.generate_data_key_without_plaintext(KeyId=key_id, NumberOfBytes=24)
    assert "Plaintext" not in without
    assert len(kms.decrypt(CiphertextBlob=without["CiphertextBlob"])["Plaintext"]) == 24
    aliases = kms.list_aliases(KeyId=key_id)["Aliases"]
    assert [a["AliasName"] for a in aliases] == ["alias/files"]
    kms.delete_alias(AliasName="alias/files")
    assert kms.list_aliases(KeyId=key_id)["Aliases"] == []


def test_key_states_deletion_and_rotation(setup: Setup) -> None:
    kms = setup.kms
    key_id = xks_key(setup)
    kms.disable_key(KeyId=key_id)
    with pytest.raises(ClientError) as disabled:
        kms.encrypt(KeyId=key_id, Plaintext=b"x")
    # The Developer Guide's key-state table: DisabledException, XKS keys included.
    assert code(disabled) == "DisabledException"
    assert disabled.value.response["Error"]["Message"].endswith(f"key/{key_id} is disabled.")
    kms.enable_key(KeyId=key_id)
    scheduled = kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert scheduled["KeyState"] == "PendingDeletion" and scheduled["PendingWindowInDays"] == 7
    with pytest.raises(ClientError) as window:
        kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=3)
    assert code(window) == "ValidationException"
    assert "Member must have value greater than or equal to 7" in str(window.value)
    with pytest.raises(ClientError) as again:
        kms.schedule_key_deletion(KeyId=key_id)
    assert code(again) == "KMSInvalidStateException"
    with pytest.raises(ClientError) as pending:
        kms.encrypt(KeyId=key_id, Plaintext=b"x")
    assert code(pending) == "KMSInvalidStateException"
    assert "is pending deletion" in pending.value.response["Error"]["Message"]
    kms.cancel_key_deletion(KeyId=key_id)
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"
    local = kms.create_key()["KeyMetadata"]["KeyId"]
    assert kms.schedule_key_deletion(KeyId=local)["PendingWindowInDays"] == 30
    for call in (kms.get_key_rotation_status, kms.enable_key_rotation):
        with pytest.raises(ClientError) as rotation:
            call(KeyId=key_id)
        assert code(rotation) == "UnsupportedOperationException"
    other = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.enable_key_rotation(KeyId=other)
    assert kms.get_key_rotation_status(KeyId=other)["KeyRotationEnabled"] is True


@pytest.mark.parametrize(
    ("xks_key_id", "error"),
    [
        (KEY_DISABLED, "XksKeyInvalidConfigurationException"),
        (KEY_DECRYPT_ONLY, "XksKeyInvalidConfigurationException"),
        ("key-missing", "XksKeyNotFoundException"),
    ],
)
def test_create_key_validates_the_external_key(setup: Setup, xks_key_id: str, error: str) -> None:
    with pytest.raises(ClientError) as refused:
        xks_key(setup, xks_key_id)
    assert code(refused) == error


def test_external_key_disabled_later_fails_encrypt(setup: Setup) -> None:
    from tests.conftest import software_database

    key_id = xks_key(setup)
    database = software_database(setup.deployment.config)
    database.set_enabled(KEY_BOTH, False)
    database.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            setup.kms.encrypt(KeyId=key_id, Plaintext=b"x")
        except ClientError as error:
            assert error.response["Error"]["Code"] == "KMSInvalidStateException"
            assert "not enabled in the external key manager" in error.response["Error"]["Message"]
            break
        assert time.monotonic() < deadline, "the proxy never saw the key disabled"
        time.sleep(0.2)


def test_wrong_credential_and_unreachable_proxy(setup: Setup, tmp_path: Path) -> None:
    kms = setup.kms
    with pytest.raises(ClientError) as wrong:
        kms.update_custom_key_store(CustomKeyStoreId=setup.store_id,
                                    XksProxyAuthenticationCredential={
                                        "AccessKeyId": "ABCDEFGHIJKLMNOPQRST",
                                        "RawSecretAccessKey": "s" * 44})  # fmt: skip
    assert code(wrong) == "XksProxyIncorrectAuthenticationCredentialException"
    kms.disconnect_custom_key_store(CustomKeyStoreId=setup.store_id)
    setup.proxy.stop()
    kms.connect_custom_key_store(CustomKeyStoreId=setup.store_id)
    store = wait_state(kms, setup.store_id)
    assert (store["ConnectionState"], store["ConnectionErrorCode"]) == (
        "FAILED",
        "XKS_PROXY_NOT_REACHABLE",
    )
    with pytest.raises(ClientError) as failed:
        kms.connect_custom_key_store(CustomKeyStoreId=setup.store_id)
    assert code(failed) == "CustomKeyStoreInvalidStateException"
    with pytest.raises(ClientError) as unreachable:
        create_store(kms, setup.deployment, setup.proxy.port, name="other",
                     uri_path="/other/kms/xks/v1")  # fmt: skip
    assert code(unreachable) == "XksProxyUriUnreachableException"


def test_slow_proxy_takes_the_timeout_path(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path / "proxy", **{
        'kek = "file:kek.key"\n': 'kek = "file:kek.key"\nfault_delay_ms = 400\n',
        "[server]\n": "[server]\nrequest_deadline_ms = 2000\n"})  # fmt: skip
    with ProxyProcess(deployment.config_path) as proxy:
        emulator = start_emulator(tmp_path / "kms.db")
        try:
            kms = emulator.client()
            store_id = connected_store(kms, deployment, proxy.port)
            with pytest.raises(ClientError) as slow:
                kms.create_key(Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=store_id,
                               XksKeyId=KEY_BOTH)  # fmt: skip
            assert code(slow) == "CustomKeyStoreInvalidStateException"
            assert "did not respond in time" in slow.value.response["Error"]["Message"]
        finally:
            stop(emulator)
        assert proxy.stop() == 0  # SIGTERM: a graceful drain, not the context's kill
    # Two attempts of 250 ms each: the proxy saw the metadata request twice, and its drain on
    # SIGTERM let the second one finish although the emulator had given up on it.
    audit = (deployment.directory / "audit.log").read_text().splitlines()
    metadata_calls = [line for line in audit if '"xksOperation":"GetKeyMetadata"' in line]
    assert len(metadata_calls) == 2, audit


def test_restart_keeps_keys_and_ciphertexts(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path / "proxy")
    with ProxyProcess(deployment.config_path) as proxy:
        emulator = start_emulator(tmp_path / "kms.db")
        kms = emulator.client()
        store_id = connected_store(kms, deployment, proxy.port)
        key_id = kms.create_key(Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=store_id,
                                XksKeyId=KEY_BOTH)["KeyMetadata"]["KeyId"]  # fmt: skip
        blob = kms.encrypt(KeyId=key_id, Plaintext=b"kept")["CiphertextBlob"]
        stop(emulator)
        emulator = start_emulator(tmp_path / "kms.db")
        try:
            again = emulator.client()
            assert again.decrypt(CiphertextBlob=blob)["Plaintext"] == b"kept"
        finally:
            stop(emulator)


def test_seed_file_and_the_aws_cli(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path / "proxy")
    store = deployment.config.key_stores[0]
    with ProxyProcess(deployment.config_path) as proxy:
        seed = tmp_path / "seed.json"
        seed.write_text(json.dumps({
            "custom_key_stores": [{
                "name": "dev", "endpoint": f"http://127.0.0.1:{proxy.port}",
                "uri_path": store.uri_path, "access_key_id": store.credentials[0].access_key_id,
                "secret_access_key": store.credentials[0].secret_access_key, "connect": True}],
            "keys": [{"alias": "alias/local"}],
        }))  # fmt: skip
        emulator = start_emulator(tmp_path / "kms.db", "--seed", str(seed))
        environment = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "AKIDEXAMPLEDEVELOPER",
            "AWS_SECRET_ACCESS_KEY": "x",
            "AWS_DEFAULT_REGION": REGION,
        }

        def aws(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(Path(XKS_PROXY).parent / "aws"), "kms", *args, "--endpoint-url",
                 emulator.url, "--output", "json"],
                capture_output=True, text=True, env=environment, timeout=60, check=False,
            )  # fmt: skip

        try:
            kms = emulator.client()
            (seeded,) = kms.describe_custom_key_stores()["CustomKeyStores"]
            assert seeded["ConnectionState"] == "CONNECTED"
            assert [a["AliasName"] for a in kms.list_aliases()["Aliases"]] == ["alias/local"]
            store_id = seeded["CustomKeyStoreId"]
            created = aws(
                "create-key",
                "--origin",
                "EXTERNAL_KEY_STORE",
                "--custom-key-store-id",
                store_id,
                "--xks-key-id",
                KEY_BOTH,
            )
            assert created.returncode == 0, created.stderr
            key_id = json.loads(created.stdout)["KeyMetadata"]["KeyId"]
            assert aws("create-alias", "--alias-name", "alias/app", "--target-key-id",
                       key_id).returncode == 0  # fmt: skip
            (plain := tmp_path / "plain.txt").write_bytes(b"from the aws cli")
            encrypted = aws("encrypt", "--key-id", "alias/app", "--plaintext", f"fileb://{plain}")
            assert encrypted.returncode == 0, encrypted.stderr
            (blob := tmp_path / "blob.bin").write_bytes(
                base64.b64decode(json.loads(encrypted.stdout)["CiphertextBlob"])
            )
            decrypted = aws("decrypt", "--ciphertext-blob", f"fileb://{blob}")
            assert decrypted.returncode == 0, decrypted.stderr
            plaintext = base64.b64decode(json.loads(decrypted.stdout)["Plaintext"])
            assert plaintext == b"from the aws cli"
            refused = aws("create-key", "--origin", "EXTERNAL_KEY_STORE", "--custom-key-store-id",
                          store_id, "--xks-key-id", "key-encrypt-only")  # fmt: skip
            assert refused.returncode != 0
            assert "XksKeyInvalidConfigurationException" in refused.stderr
        finally:
            stop(emulator)


def test_key_store_updates_and_deletion(setup: Setup) -> None:
    kms = setup.kms
    kms.update_custom_key_store(CustomKeyStoreId=setup.store_id, NewCustomKeyStoreName="renamed")
    assert kms.describe_custom_key_stores(CustomKeyStoreName="renamed")["CustomKeyStores"]
    credential = setup.deployment.config.key_stores[0].credentials[0]
    kms.update_custom_key_store(CustomKeyStoreId=setup.store_id, XksProxyAuthenticationCredential={
        "AccessKeyId": credential.access_key_id,
        "RawSecretAccessKey": credential.secret_access_key})  # fmt: skip
    # The URI path may change while CONNECTED, but only to one the proxy answers on.
    with pytest.raises(ClientError) as untested:
        kms.update_custom_key_store(CustomKeyStoreId=setup.store_id,
                                    XksProxyUriPath="/elsewhere/kms/xks/v1")  # fmt: skip
    assert code(untested) == "XksProxyInvalidConfigurationException"
    # The endpoint only while DISCONNECTED.
    with pytest.raises(ClientError) as connected:
        kms.update_custom_key_store(CustomKeyStoreId=setup.store_id,
                                    XksProxyUriEndpoint="http://localhost:1")  # fmt: skip
    assert code(connected) == "CustomKeyStoreInvalidStateException"
    # Length is checked on update as on create (the copies had drifted: issue 14).
    with pytest.raises(ClientError) as too_long:
        kms.update_custom_key_store(CustomKeyStoreId=setup.store_id,
                                    XksProxyUriPath="/" + "p" * 120 + "/kms/xks/v1")  # fmt: skip
    assert code(too_long) == "ValidationException"
    assert (
        "at 'xksProxyUriPath' failed to satisfy constraint: Member must have length less "
        "than or equal to 128" in str(too_long.value)
    )
    store = kms.describe_custom_key_stores(CustomKeyStoreId=setup.store_id)["CustomKeyStores"][0]
    assert store["XksProxyConfiguration"]["UriPath"] == "/keystores/dev/kms/xks/v1"
    # The same proxy under another endpoint name: a second store without keys can be deleted.
    other = create_store(kms, setup.deployment, setup.proxy.port, name="spare", host="localhost")
    with pytest.raises(ClientError) as duplicate:
        create_store(kms, setup.deployment, setup.proxy.port, name="spare", host="localhost")
    assert code(duplicate) == "CustomKeyStoreNameInUseException"
    kms.delete_custom_key_store(CustomKeyStoreId=other)
    with pytest.raises(ClientError) as gone:
        kms.describe_custom_key_stores(CustomKeyStoreId=other)
    assert code(gone) == "CustomKeyStoreNotFoundException"


def test_key_store_quota_answers_throttling(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path / "proxy")
    with ProxyProcess(deployment.config_path) as proxy:
        emulator = start_emulator(tmp_path / "kms.db", "--xks-rate", "3")
        try:
            kms = emulator.client(retries=1)  # boto3 would otherwise retry the throttling away
            store_id = connected_store(kms, deployment, proxy.port)
            key_id = kms.create_key(Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=store_id,
                                    XksKeyId=KEY_BOTH)["KeyMetadata"]["KeyId"]  # fmt: skip
            outcomes = []
            for _ in range(10):
                try:
                    kms.encrypt(KeyId=key_id, Plaintext=b"x")
                    outcomes.append("ok")
                except ClientError as error:
                    outcomes.append(error.response["Error"]["Code"])
            assert outcomes.count("ok") >= 3 and "ThrottlingException" in outcomes
        finally:
            stop(emulator)


def test_loadtest_through_the_emulator(setup: Setup) -> None:
    from xks_proxy.loadtest.runner import LoadSpec, run
    from xks_proxy.loadtest.workload import KMS_OPERATIONS, KmsTarget, parse_mix
    from xks_proxy.sigv4 import Credential

    key_id = xks_key(setup)
    setup.kms.create_alias(AliasName="alias/load", TargetKeyId=key_id)
    spec = LoadSpec(
        target=KmsTarget(setup.emulator.url, "alias/load", REGION, Credential("AKIDLOAD", "x")),
        mix=parse_mix("encrypt=1,decrypt=1,generate-data-key=1", KMS_OPERATIONS),
        rate=30, duration=1, connections=4, timeout=5,
    )  # fmt: skip
    summary = run(spec).summary()
    assert summary["completed"] == 30 and summary["errors"] == {}
    missing = LoadSpec(target=KmsTarget(setup.emulator.url, "alias/none", REGION,
                                        Credential("AKIDLOAD", "x")),
                       mix=[("generate-data-key", 1)], rate=20, duration=0.5)  # fmt: skip
    assert run(missing).summary()["errors"] == {"NotFoundException": 10}
    # The proxy saw each of them, with the KMS operation that caused it.
    audit = (setup.deployment.directory / "audit.log").read_text()
    assert '"kmsOperation":"GenerateDataKey"' in audit and '"kmsOperation":"Decrypt"' in audit


def test_bad_input_gets_kms_errors(setup: Setup, tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    kms = setup.kms
    store = setup.deployment.config.key_stores[0]
    good = {"AccessKeyId": store.credentials[0].access_key_id,
            "RawSecretAccessKey": store.credentials[0].secret_access_key}  # fmt: skip
    base = {"CustomKeyStoreName": "bad", "CustomKeyStoreType": "EXTERNAL_KEY_STORE",
            "XksProxyUriEndpoint": f"http://127.0.0.1:{setup.proxy.port}",
            "XksProxyUriPath": "/elsewhere/kms/xks/v1", "XksProxyAuthenticationCredential": good,
            "XksProxyConnectivity": "PUBLIC_ENDPOINT"}  # fmt: skip
    for change, expected in (
        ({"XksProxyUriPath": "/no/suffix"}, "ValidationException"),
        ({"XksProxyAuthenticationCredential": {**good, "RawSecretAccessKey": "!" * 44}},
         "ValidationException"),
        ({"XksProxyUriEndpoint": "ftp://127.0.0.1"}, "ValidationException"),
        ({}, "XksProxyInvalidConfigurationException"),  # the proxy knows no such path
    ):  # fmt: skip
        with pytest.raises(ClientError) as refused:
            kms.create_custom_key_store(**{**base, **change})
        assert code(refused) == expected, change
        assert good["RawSecretAccessKey"] not in str(refused.value.response)
    for body, target, expected in (
        (b"{", "TrentService.ListKeys", "SerializationException"),
        (b"{}", "TrentService.Nope", "UnknownOperationException"),
    ):
        request = urllib.request.Request(
            setup.emulator.url, data=body, method="POST",
            headers={"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1",
                     "Authorization": "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/"
                                      "kms/aws4_request, SignedHeaders=host, Signature=0"},
        )  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=10)
        assert json.loads(answer.value.read())["__type"] == expected
    strict = start_emulator(tmp_path / "strict.db", "--strict")
    try:
        with pytest.raises(ClientError) as refused_http:
            strict.client().create_custom_key_store(**base)
        assert code(refused_http) == "ValidationException"
    finally:
        stop(strict)


def test_event_log_correlates_with_the_proxy_audit_log(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path / "proxy")
    events = tmp_path / "events.jsonl"
    with ProxyProcess(deployment.config_path) as proxy:
        emulator = start_emulator(tmp_path / "kms.db", "--event-log", str(events))
        try:
            kms = emulator.client()
            store_id = connected_store(kms, deployment, proxy.port)
            key_id = kms.create_key(Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=store_id,
                                    XksKeyId=KEY_BOTH)["KeyMetadata"]["KeyId"]  # fmt: skip
            encrypted = kms.encrypt(KeyId=key_id, Plaintext=b"very secret words",
                                    EncryptionContext={"app": "audit"})  # fmt: skip
            data_key = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256")
            with pytest.raises(ClientError):
                kms.describe_key(KeyId="alias/missing")
        finally:
            stop(emulator)
    records = [json.loads(line) for line in events.read_text().splitlines()]
    by_name = {r["eventName"]: r for r in records}
    encrypt = by_name["Encrypt"]
    assert encrypt["requestParameters"] == {
        "keyId": key_id, "encryptionContext": {"app": "audit"}}  # fmt: skip
    assert encrypt["userIdentity"]["accessKeyId"] == "AKIDEXAMPLEDEVELOPER"
    assert encrypt["resources"][0]["ARN"].endswith(key_id)
    assert encrypt["additionalEventData"] == {"customKeyStoreId": store_id, "xksKeyId": KEY_BOTH}
    assert encrypt["requestID"] == encrypted["ResponseMetadata"]["RequestId"]
    assert by_name["DescribeKey"]["errorCode"] == "NotFoundException"
    text = events.read_text()
    credential = deployment.config.key_stores[0].credentials[0]
    for secret in (b"very secret words", data_key["Plaintext"], data_key["CiphertextBlob"]):
        assert base64.b64encode(secret).decode() not in text
    assert "very secret words" not in text and credential.secret_access_key not in text
    # The proxy's audit line for the same call carries the KMS request id.
    audit = [json.loads(line) for line in
             (deployment.directory / "audit.log").read_text().splitlines()]  # fmt: skip
    ids = {(a.get("kmsRequestId"), a.get("kmsOperation")) for a in audit}
    assert (encrypt["requestID"], "Encrypt") in ids
    assert (by_name["GenerateDataKey"]["requestID"], "GenerateDataKey") in ids


def test_aws_encryption_sdk_round_trips_a_mebibyte(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aws_encryption_sdk
    import botocore.session
    from aws_encryption_sdk.identifiers import CommitmentPolicy

    # botocore's service-specific endpoint variable: the SDK makes its own KMS clients.
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", setup.emulator.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENCRYPTIONSDK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    sdk = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    data = os.urandom(1024 * 1024)
    xks_arn = setup.kms.describe_key(KeyId=xks_key(setup))["KeyMetadata"]["Arn"]
    local_arn = setup.kms.create_key()["KeyMetadata"]["Arn"]
    for arn in (xks_arn, local_arn):
        provider = aws_encryption_sdk.StrictAwsKmsMasterKeyProvider(
            key_ids=[arn], botocore_session=botocore.session.Session()
        )
        message, _ = sdk.encrypt(source=data, key_provider=provider,
                                 encryption_context={"purpose": "esdk"})  # fmt: skip
        plaintext, header = sdk.decrypt(source=message, key_provider=provider)
        assert plaintext == data and header.encryption_context["purpose"] == "esdk"
    audit = (setup.deployment.directory / "audit.log").read_text()
    assert '"kmsOperation":"GenerateDataKey"' in audit and '"kmsOperation":"Decrypt"' in audit
