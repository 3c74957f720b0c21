"""The KMS emulator in front of a real XKS proxy (software keys): a per-test set-up with a
connected external key store, and the calls the tests make on it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import KEY_BOTH, Deployment, make_deployment
from tests.kms_emulator_helpers import Emulator, start_emulator, stop
from tests.proxy_process import ProxyProcess


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


def proxy_setup() -> Any:
    """A fixture: a proxy process, an emulator and a connected external key store, per test."""

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

    return setup


def xks_key(setup: Setup, xks_key_id: str = KEY_BOTH) -> str:
    created = setup.kms.create_key(Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=setup.store_id,
                                   XksKeyId=xks_key_id, Description="xks")  # fmt: skip
    return str(created["KeyMetadata"]["KeyId"])
