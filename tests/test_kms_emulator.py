"""The KMS emulator end to end: boto3 and the aws CLI → emulator → XKS proxy (software keys)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.conftest import KEY_BOTH, KEY_DECRYPT_ONLY, KEY_DISABLED, make_deployment
from tests.kms_emulator_helpers import REGION, code, start_emulator, stop
from tests.kms_emulator_proxy import (
    Setup,
    connected_store,
    proxy_setup,
    xks_key,
)
from tests.proxy_process import XKS_PROXY, ProxyProcess

setup = proxy_setup()


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
            last = kms.get_key_last_usage(KeyId=key_id)["KeyLastUsage"]
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
    assert last["CloudTrailEventId"] == by_name["GenerateDataKey"]["eventID"]
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
