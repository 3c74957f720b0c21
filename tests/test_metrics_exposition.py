"""The metrics as Prometheus sees them: a live scrape of a real two-worker proxy with TLS passes
the real ``promtool check metrics``, the certificate's expiry is a timestamp, a reload counts
once however many workers there are; a saturated PKCS#11 session pool shows in its metrics."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import CONFORMANCE_TOKEN, KEY_BOTH, make_pkcs11_deployment
from tests.proxy_process import XKS_PROXY, ProxyProcess, close_all, connect, post
from tests.softhsm import SoftHsm
from tests.xks_client import XksClient, encrypt_body
from xks_proxy import sigv4
from xks_proxy.config import load_config
from xks_proxy.runtime import ProxyRuntime
from xks_proxy.scaffold import scaffold
from xks_proxy.web.app import create_app
from xks_proxy.web.tls import certificate_not_after

PROMTOOL = shutil.which("promtool")
WORKERS = 2
RELOADS = 3


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    close_all()


def scrape(proxy: ProxyProcess) -> str:
    with urllib.request.urlopen(proxy.metrics_url, timeout=10) as response:
        return str(response.read().decode())


def sample(text: str, name: str) -> float:
    """The value of one sample line, ``name`` with its labels as exposed."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name + " ")]  # fmt: skip
    assert len(values) == 1, f"{name} is not in:\n{text}"
    return values[0]


def test_a_live_scrape_passes_promtool_and_counts_reloads_once(tmp_path: Path) -> None:
    assert PROMTOOL is not None, "make test installs it (scripts/install-system-deps.sh)"
    made = scaffold(tmp_path, key_id=KEY_BOTH, port=0, metrics_port=0, admin_port=0, tls=True)
    config = load_config(made.config_path)
    assert config.tls is not None
    store = config.key_stores[0]
    client_tls = ssl.create_default_context(cafile=str(config.tls.certificate))
    metadata = {"awsPrincipalArn": "arn:p", "kmsKeyArn": "arn:k", "kmsOperation": "Encrypt",
                "kmsRequestId": "metrics"}  # fmt: skip
    document = {"requestMetadata": metadata, "plaintext": "SGk=", "encryptionAlgorithm": "AES_GCM"}
    with ProxyProcess(made.config_path, "--workers", str(WORKERS)) as proxy:
        proxy.wait_for("key store", count=WORKERS)
        for _ in range(4):
            connection = connect(proxy.port, client_tls)
            encrypt = f"{store.uri_path}/keys/{KEY_BOTH}/encrypt"
            assert post(connection, encrypt, document, store.credentials[0])[0] == 200
            wrong = sigv4.Credential(store.credentials[0].access_key_id, "x" * 43)
            assert post(connection, encrypt, document, wrong)[0] == 401
        for reload in range(1, RELOADS + 1):
            subprocess.run([XKS_PROXY, "reload", "--config", str(made.config_path)],
                           check=True, capture_output=True, timeout=60)  # fmt: skip
            proxy.wait_for("configuration reloaded", count=WORKERS * reload)
        text = scrape(proxy)
    checked = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                             text=True, timeout=60, check=False)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == ""
    assert sample(text, 'xks_config_reloads_total{result="applied"}') == RELOADS
    expiry = sample(text, "xks_tls_certificate_expiry_timestamp_seconds")
    assert expiry == certificate_not_after(config.tls.certificate).timestamp()
    assert "expiry_days" not in text


async def test_a_saturated_session_pool_shows_in_the_metrics(
    tmp_path: Path,
    softhsm: SoftHsm,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> None:
    deployment = make_pkcs11_deployment(tmp_path, softhsm, sessions=1, session_wait_ms=5000)
    runtime = ProxyRuntime(deployment.config)
    client = await aiohttp_client(create_app(runtime))
    store = runtime.config.key_stores[0]
    xks = XksClient(client, store.uri_path, store.region, store.credentials[0])
    labels = {"backend": "hsm", "token": CONFORMANCE_TOKEN}

    def value(name: str) -> float:
        # A labelled series appears with its first value: none yet reads as 0.
        return runtime.metrics.registry.get_sample_value(name, labels) or 0.0

    assert value("xks_pkcs11_sessions") == 1
    waits = value("xks_pkcs11_session_wait_seconds_count")
    # Hold the pool's only session, as a slow HSM call would: the next request must wait.
    pool = runtime.backends["hsm"]._tokens[0].pool  # type: ignore[attr-defined]
    held = pool.get_nowait()
    request = asyncio.create_task(xks.post("encrypt", KEY_BOTH, encrypt_body(b"saturate")))
    for _ in range(200):
        if value("xks_pkcs11_session_waiters") == 1:
            break
        await asyncio.sleep(0.01)
    assert value("xks_pkcs11_session_waiters") == 1
    await asyncio.sleep(0.05)
    pool.put_nowait(held)
    assert (await request).status == 200
    assert value("xks_pkcs11_session_waiters") == 0
    assert value("xks_pkcs11_sessions_in_use") == 0
    assert value("xks_pkcs11_session_wait_seconds_count") > waits
    assert value("xks_pkcs11_session_wait_seconds_sum") >= 0.05
