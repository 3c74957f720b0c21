"""Custom key stores end to end: boto3 → emulator → XKS proxy. Lifecycle, updates tested
against the proxy, failures of the proxy, and input validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.conftest import KEY_BOTH, make_deployment
from tests.kms_emulator_helpers import code, start_emulator, stop
from tests.kms_emulator_proxy import (
    Setup,
    connected_store,
    create_store,
    proxy_setup,
    wait_state,
    xks_key,
)
from tests.proxy_process import ProxyProcess

setup = proxy_setup()


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
    # The endpoint only while DISCONNECTED (repeating the current one changes nothing).
    current = kms.describe_custom_key_stores(CustomKeyStoreId=setup.store_id)["CustomKeyStores"][0]
    kms.update_custom_key_store(
        CustomKeyStoreId=setup.store_id, NewCustomKeyStoreName="renamed-again",
        XksProxyUriEndpoint=current["XksProxyConfiguration"]["UriEndpoint"],
        XksProxyConnectivity="PUBLIC_ENDPOINT")  # fmt: skip
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
