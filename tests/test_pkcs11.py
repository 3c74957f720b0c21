"""What only the PKCS#11 backend does, against real SoftHSM2 tokens (never skipped).

The API behaviour both backends share is tested by the conformance suite in test_api.py,
which runs once per backend."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    CONFORMANCE_TOKEN,
    KEY_BOTH,
    Deployment,
    make_pkcs11_deployment,
    with_server_settings,
)
from tests.proxy_process import XKS_PROXY, ProxyProcess, close_all, connect, post
from tests.softhsm import HEALTH_LABEL, USER_PIN, SoftHsm, make_softhsm
from tests.xks_client import (
    HEALTH_BODY,
    METADATA_BODY,
    XksClient,
    decrypt_body,
    encrypt_body,
    unb64,
)
from xks_proxy.backends.pkcs11 import Pkcs11Backend
from xks_proxy.config import load_config
from xks_proxy.runtime import ProxyRuntime
from xks_proxy.sigv4 import Credential
from xks_proxy.web.app import create_app

TOOLS = Path(__file__).resolve().parents[1] / "tools"


async def _client(deployment: Deployment, aiohttp_client: Any) -> tuple[ProxyRuntime, XksClient]:
    runtime = ProxyRuntime(deployment.config)
    client = await aiohttp_client(create_app(runtime))
    store = deployment.config.key_stores[0]
    return runtime, XksClient(client, store.uri_path, store.region, store.credentials[0])


@pytest.fixture
async def hsm_xks(
    tmp_path: Path, softhsm: SoftHsm, aiohttp_client: Any
) -> tuple[ProxyRuntime, XksClient]:
    return await _client(make_pkcs11_deployment(tmp_path, softhsm), aiohttp_client)


@pytest.mark.parametrize(
    ("key_id", "key_spec"), [("key-rsa", "RSA_2048"), ("key-aes-128", "AES_128")]
)
async def test_only_a_32_byte_aes_key_is_aes_256(
    hsm_xks: tuple[ProxyRuntime, XksClient], key_id: str, key_spec: str
) -> None:
    _, xks = hsm_xks
    metadata = await xks.call("metadata", key_id, METADATA_BODY)
    assert metadata["keySpec"] == key_spec != "AES_256"
    error = await xks.call("encrypt", key_id, encrypt_body(b"x"), expect=400)
    assert error["errorName"] == "InvalidKeyUsageException"
    assert (await xks.call("metadata", KEY_BOTH, METADATA_BODY))["keySpec"] == "AES_256"


async def test_key_usage_reports_every_capability(hsm_xks: tuple[ProxyRuntime, XksClient]) -> None:
    _, xks = hsm_xks
    metadata = await xks.call("metadata", "key-with-sign", METADATA_BODY)
    assert metadata["keyUsage"] == ["DECRYPT", "ENCRYPT", "SIGN", "VERIFY"]


async def test_health_key_is_not_a_customer_key(
    tmp_path: Path, softhsm: SoftHsm, aiohttp_client: Any
) -> None:
    deployment = make_pkcs11_deployment(tmp_path, softhsm)
    text = deployment.config_path.read_text().replace('keys = ["key-*"]', 'keys = ["*"]')
    deployment.config_path.write_text(text)
    _, xks = await _client(Deployment(tmp_path, load_config(deployment.config_path)),
                           aiohttp_client)  # fmt: skip
    error = await xks.call("metadata", HEALTH_LABEL, METADATA_BODY, expect=404)
    assert error["errorName"] == "KeyNotFoundException"


async def test_keys_found_by_cka_id(tmp_path: Path, softhsm: SoftHsm, aiohttp_client: Any) -> None:
    deployment = make_pkcs11_deployment(tmp_path, softhsm, key_lookup="id")
    _, xks = await _client(deployment, aiohttp_client)
    encrypted = await xks.call("encrypt", KEY_BOTH, encrypt_body(b"by id", b"ctx"))
    decrypted = await xks.call("decrypt", KEY_BOTH, decrypt_body(encrypted, b"ctx"))
    assert unb64(decrypted["plaintext"]) == b"by id"


async def test_hundreds_of_overlapping_requests(
    tmp_path: Path, softhsm: SoftHsm, aiohttp_client: Any
) -> None:
    # 600 operations queue for 4 sessions: the bounds are the configuration's largest, so a
    # busy machine (a parallel test run) slows the test down instead of failing it.
    deployment = make_pkcs11_deployment(tmp_path, softhsm, sessions=4, session_wait_ms=60_000)
    text = with_server_settings(deployment.config_path.read_text(), {"request_deadline_ms": 60_000})
    deployment.config_path.write_text(text)
    runtime, xks = await _client(Deployment(tmp_path, load_config(deployment.config_path)),
                                 aiohttp_client)  # fmt: skip

    async def round_trip(index: int) -> bytes:
        plaintext = b"%d" % index * 100
        encrypted = await xks.call("encrypt", KEY_BOTH, encrypt_body(plaintext, b"ctx"))
        decrypted = await xks.call("decrypt", KEY_BOTH, decrypt_body(encrypted, b"ctx"))
        return (unb64(decrypted["plaintext"]) == plaintext and b"ok") or b"mismatch"

    results = await asyncio.gather(*(round_trip(i) for i in range(300)))
    assert results == [b"ok"] * 300
    backend = runtime.backends["hsm"]
    assert isinstance(backend, Pkcs11Backend)
    health = await xks.call("health", None, HEALTH_BODY)
    assert health["ekmFleetDetails"][0]["healthStatus"] == "ACTIVE"


def test_the_module_survives_threads_only_with_os_locking(softhsm: SoftHsm) -> None:
    # The same workload that crashed SoftHSM 2.6.1 when initialised the way python-pkcs11 does
    # (tools/pkcs11_os_locking.py --raw), through the proxy's own initialisation.
    result = subprocess.run(
        [sys.executable, str(TOOLS / "pkcs11_os_locking.py"), "--module", str(softhsm.module),
         "--token", CONFORMANCE_TOKEN, "--pin", USER_PIN, "--key", KEY_BOTH,
         "--threads", "16", "--rounds", "100"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stdout.strip()) == (0, "survived"), result.stderr


def _call_threads() -> set[threading.Thread]:
    """The backend's call threads alive now; as objects, since a new thread reuses the name of
    one an earlier test's backend started."""
    return {each for each in threading.enumerate() if each.name.startswith("pkcs11-hsm")}


async def test_calls_on_event_loop_keep_every_answer_and_start_no_thread(
    tmp_path: Path, softhsm: SoftHsm, aiohttp_client: Any
) -> None:
    """``calls_on_event_loop = true``: the same answers (key versions, a bad tag, a version
    the key never had, a missing key, pool exhaustion), and no call thread is ever started."""
    from tests.test_pkcs11_rotation import BOTH, fresh_key_id, metadata_version, with_version
    from xks_proxy.pkcs11_admin import create_key, rotate_key

    before = _call_threads()
    config = softhsm.backend_config(CONFORMANCE_TOKEN)
    key_id = fresh_key_id()
    create_key(config, config.tokens[0], key_id, BOTH)
    deployment = make_pkcs11_deployment(tmp_path, softhsm, sessions=1, session_wait_ms=1000,
                                        calls_on_event_loop=True)  # fmt: skip
    assert deployment.config.backends["hsm"].calls_on_event_loop is True  # type: ignore[union-attr]
    runtime, xks = await _client(deployment, aiohttp_client)
    first = await xks.call("encrypt", key_id, encrypt_body(b"one", b"ctx"))
    assert metadata_version(first) == 1
    assert rotate_key(config, config.tokens[0], key_id) == 2
    # Decrypt names version 2 before Encrypt's once-a-second probe found it: found, learned.
    second = await xks.call("encrypt", key_id, encrypt_body(b"two", b"ctx"))
    assert metadata_version(second) in (1, 2)
    for encrypted, plaintext in ((first, b"one"), (second, b"two")):
        decrypted = await xks.call("decrypt", key_id, decrypt_body(encrypted, b"ctx"))
        assert unb64(decrypted["plaintext"]) == plaintext
    bad_tag = {**first, "authenticationTag": encrypt_body(bytes(16))["plaintext"]}
    for body in (decrypt_body(bad_tag, b"ctx"), decrypt_body(with_version(first, 3), b"ctx"),
                 decrypt_body(first, b"other context")):  # fmt: skip
        error = await xks.call("decrypt", key_id, body, expect=400)
        assert error["errorName"] == "InvalidCiphertextException"
    error = await xks.call("encrypt", "key-never-made", encrypt_body(b"x"), expect=404)
    assert error["errorName"] == "KeyNotFoundException"
    backend = runtime.backends["hsm"]
    assert isinstance(backend, Pkcs11Backend)
    held = await backend.hold_session()
    error = await xks.call("encrypt", key_id, encrypt_body(b"x"), expect=503)
    assert error["errorName"] == "DependencyTimeoutException"
    backend.release_session(held)
    health = await xks.call("health", None, HEALTH_BODY)
    assert health["ekmFleetDetails"][0]["healthStatus"] == "ACTIVE"
    assert _call_threads() <= before, "a call ran on a thread"


async def test_pool_exhaustion_waits_then_times_out(
    tmp_path: Path, softhsm: SoftHsm, aiohttp_client: Any
) -> None:
    # The session wait (60 s) is far longer than the request deadline (3 s): the deadline wins,
    # however loaded the machine (the bounds below are on a hang, not on speed).
    deployment = make_pkcs11_deployment(tmp_path, softhsm, sessions=1, session_wait_ms=60_000)
    deployment.config_path.write_text(
        with_server_settings(deployment.config_path.read_text(), {"request_deadline_ms": 3000})
    )
    runtime, xks = await _client(Deployment(tmp_path, load_config(deployment.config_path)),
                                 aiohttp_client)  # fmt: skip
    backend = runtime.backends["hsm"]
    assert isinstance(backend, Pkcs11Backend)
    await xks.call("metadata", KEY_BOTH, METADATA_BODY)  # description cached
    held = await backend.hold_session()
    started = time.monotonic()
    error = await xks.call("encrypt", KEY_BOTH, encrypt_body(b"x"), expect=503)
    waited = time.monotonic() - started
    assert error["errorName"] == "DependencyTimeoutException"
    assert 3.0 <= waited < 30, "it waited for a session until the request deadline"
    # A request that waits less than session_wait_ms gets the session when it comes back.
    pending = asyncio.create_task(xks.call("encrypt", KEY_BOTH, encrypt_body(b"y")))
    await asyncio.sleep(0.1)
    backend.release_session(held)
    assert (await pending)["ciphertext"]


async def test_token_generated_iv_is_never_a_fixed_iv(
    tmp_path: Path, softhsm: SoftHsm, aiohttp_client: Any
) -> None:
    # SoftHSM does not write IVs: the proxy must refuse rather than encrypt under zeros.
    deployment = make_pkcs11_deployment(tmp_path, softhsm, iv_source="token")
    _, xks = await _client(deployment, aiohttp_client)
    error = await xks.call("encrypt", KEY_BOTH, encrypt_body(b"x"), expect=500)
    assert error["errorName"] == "InternalException"
    health = await xks.call("health", None, HEALTH_BODY)
    assert health["ekmFleetDetails"][0]["healthStatus"] == "UNAVAILABLE"


def _serve_fails(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([XKS_PROXY, "serve", "--config", str(config), "--port", "0"],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ((f'user_pin = "{USER_PIN}"', 'user_pin = "0000-wrong"'), "user_pin"),
        ((f'label = "{CONFORMANCE_TOKEN}"', 'label = "no-such-token"'), "tokens"),
        (("[backends.hsm]\n", '[backends.hsm]\nhealth_key_label = "nope"\n'), "health_key_label"),
    ],
    ids=["wrong PIN", "unknown token", "missing health key"],
)
def test_start_up_errors_are_clear(
    tmp_path: Path, softhsm: SoftHsm, change: tuple[str, str], where: str
) -> None:
    deployment = make_pkcs11_deployment(tmp_path, softhsm)
    deployment.config_path.write_text(deployment.config_path.read_text().replace(*change))
    checked = subprocess.run(
        [XKS_PROXY, "check-config", "--config", str(deployment.config_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    for result in (_serve_fails(deployment.config_path), checked):
        assert result.returncode == 2, result.stderr
        assert f"backends.hsm.{where}" in result.stderr
        assert "Traceback" not in result.stderr
        assert USER_PIN not in result.stderr and "0000-wrong" not in result.stderr


def _own_softhsm(directory: Path) -> tuple[SoftHsm, dict[str, str]]:
    hsm = make_softhsm(directory / "hsm")
    hsm.init_token("removable")
    return hsm, {**os.environ, "SOFTHSM2_CONF": str(hsm.conf)}


@dataclass
class _RemovableTokenProxy:
    """``xks-proxy serve`` in a subprocess on its own SoftHSM token, which a test may remove."""

    hsm: SoftHsm
    proxy: ProxyProcess
    credential: Credential

    def post(self, connection: HTTPConnection, operation: str, body: dict[str, Any],
             key_id: str = KEY_BOTH) -> tuple[int, dict[str, Any]]:  # fmt: skip
        path = "/keystores/dev/kms/xks/v1/" + (
            "health" if operation == "health" else f"keys/{key_id}/{operation}"
        )
        return post(connection, path, body, self.credential)

    def health(self) -> str:
        status, body = self.post(connect(self.proxy.port), "health", HEALTH_BODY)
        assert status == 200
        return str(body["ekmFleetDetails"][0]["healthStatus"])

    def wait_for_health(self, state: str, timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while self.health() != state:
            assert time.monotonic() < deadline, f"health never became {state}:\n{self.proxy.log}"
            time.sleep(0.2)


def _provisioned_removable_token(tmp_path: Path, **settings: object) -> tuple[SoftHsm, Path]:
    """A deployment made by ``init`` whose key store uses a token provisioned with the
    ``pkcs11`` commands (checked here too): its own SoftHSM, health checked every second."""
    hsm, environment = _own_softhsm(tmp_path)
    deployment_dir = tmp_path / "dep"
    subprocess.run([XKS_PROXY, "init", str(deployment_dir), "--key-id", KEY_BOTH, "--port", "0",
                    "--metrics-port", "0", "--admin-port", "0"],
                   check=True, capture_output=True)  # fmt: skip
    config = deployment_dir / "xks-proxy.toml"
    text = config.read_text()
    software = text[text.index("[backends.local]") : text.index("[[key_stores]]")]
    text = text.replace(software, hsm.toml("removable", **settings) + "\n").replace(
        'backend = "local"', 'backend = "hsm"'
    )
    config.write_text(text.replace("interval_seconds = 15", "interval_seconds = 1"))

    def cli(*args: str) -> str:
        result = subprocess.run(
            [XKS_PROXY, *args, "--config", str(config)],
            env=environment, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    cli("pkcs11", "create-key", "--health")
    cli("pkcs11", "create-key", "--label", KEY_BOTH)
    cli("pkcs11", "create-key", "--label", "enc-only", "--usage", "ENCRYPT")
    listed = cli("pkcs11", "list-keys")
    assert f"{KEY_BOTH}  AES-256  ENCRYPT,DECRYPT" in listed
    assert "enc-only  AES-256  ENCRYPT" in listed
    duplicate = subprocess.run([XKS_PROXY, "pkcs11", "create-key", "--label", KEY_BOTH,
                                "--config", str(config)], env=environment, capture_output=True,
                               text=True, timeout=60, check=False)  # fmt: skip
    assert duplicate.returncode == 1
    return hsm, config


@contextlib.contextmanager
def _removable_token_proxy(tmp_path: Path, **settings: object) -> Iterator[_RemovableTokenProxy]:
    hsm, config = _provisioned_removable_token(tmp_path, **settings)
    credential = load_config(config).key_stores[0].credentials[0]
    old_conf = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(hsm.conf)  # inherited by the proxy process
    try:
        proxy = ProxyProcess(config)
    finally:
        if old_conf is not None:
            os.environ["SOFTHSM2_CONF"] = old_conf
    try:
        with proxy:
            yield _RemovableTokenProxy(hsm, proxy, credential)
            assert proxy.stop() == 0
    finally:
        close_all()
        shutil.rmtree(hsm.directory, ignore_errors=True)


@pytest.mark.parametrize("calls_on_event_loop", [False, True])
def test_provisioning_commands_and_token_loss_and_recovery(
    tmp_path: Path, calls_on_event_loop: bool
) -> None:
    """A proxy whose token disappears: health UNAVAILABLE, requests fail cleanly, and both
    come back by themselves when the token does; with the module's calls on call threads and
    on the event loop thread alike."""
    with _removable_token_proxy(tmp_path, calls_on_event_loop=calls_on_event_loop) as hsm_proxy:
        hsm_proxy.wait_for_health("ACTIVE")
        status, encrypted = hsm_proxy.post(connect(hsm_proxy.proxy.port), "encrypt",
                                           encrypt_body(b"kept"))  # fmt: skip
        assert status == 200
        away = hsm_proxy.hsm.remove_token()
        hsm_proxy.wait_for_health("UNAVAILABLE")
        status, error = hsm_proxy.post(connect(hsm_proxy.proxy.port), "encrypt", encrypt_body(b"x"))
        assert (status, error["errorName"]) == (500, "InternalException")
        assert "PKCS" not in error["errorMessage"] and "CKR" not in error["errorMessage"]
        hsm_proxy.hsm.restore_token(away)
        hsm_proxy.wait_for_health("ACTIVE")
        status, decrypted = hsm_proxy.post(connect(hsm_proxy.proxy.port), "decrypt",
                                           decrypt_body(encrypted))  # fmt: skip
        assert (status, unb64(decrypted["plaintext"])) == (200, b"kept")


# xks-spec §7.3: KMS retries only these; a lost device is never the caller's mistake.
RETRYABLE = {"InternalException", "DependencyTimeoutException"}


@pytest.mark.parametrize("calls_on_event_loop", [False, "auto"])
def test_token_loss_under_load_is_never_key_not_found(
    tmp_path: Path, calls_on_event_loop: bool | str
) -> None:
    """Finding 3 of issue 9: with the token gone, key lookups find nothing, which must not
    read as "no such key" (KMS takes a 404 as permanent), from the first failing request on.
    With six clients' calls in the module at once on call threads (written when they were the
    default), and under "auto", SoftHSM2's default: on the event loop, or on threads once a
    slow call moved them there."""
    with _removable_token_proxy(tmp_path, calls_on_event_loop=calls_on_event_loop) as hsm_proxy:
        hsm_proxy.wait_for_health("ACTIVE")
        status, kept = hsm_proxy.post(connect(hsm_proxy.proxy.port), "encrypt",
                                      encrypt_body(b"kept", b"ctx"))  # fmt: skip
        assert status == 200
        requests = [
            ("encrypt", encrypt_body(b"load", b"ctx"), KEY_BOTH),
            ("decrypt", decrypt_body(kept, b"ctx"), KEY_BOTH),
            ("metadata", METADATA_BODY, KEY_BOTH),
            ("metadata", METADATA_BODY, "enc-only"),
            ("encrypt", encrypt_body(b"load", cdiv=False), "enc-only"),
        ]
        answers: list[tuple[int, str]] = []
        crashes: list[BaseException] = []
        stop = threading.Event()

        def client() -> None:
            connection = connect(hsm_proxy.proxy.port)
            try:
                while not stop.is_set():
                    for operation, body, key_id in requests:
                        status, answer = hsm_proxy.post(connection, operation, body, key_id)
                        answers.append((status, str(answer.get("errorName", ""))))
            except BaseException as error:
                crashes.append(error)

        clients = [threading.Thread(target=client) for _ in range(6)]
        for each in clients:
            each.start()
        try:
            while len(answers) < 50 and not crashes:
                time.sleep(0.05)
            away = hsm_proxy.hsm.remove_token()
            hsm_proxy.wait_for_health("UNAVAILABLE")
            failing_since = len(answers)
            while len(answers) < failing_since + 50 and not crashes:
                time.sleep(0.05)
        finally:
            stop.set()
            for each in clients:
                each.join(timeout=30)
        assert not crashes, crashes
        failures = collections.Counter(answer for answer in answers if answer[0] != 200)
        assert failures, "no request saw the token loss"
        assert {name for _, name in failures} <= RETRYABLE, failures
        hsm_proxy.hsm.restore_token(away)
        hsm_proxy.wait_for_health("ACTIVE")
        connection = connect(hsm_proxy.proxy.port)
        status, decrypted = hsm_proxy.post(connection, "decrypt", decrypt_body(kept, b"ctx"))
        assert (status, unb64(decrypted["plaintext"])) == (200, b"kept")
        status, _ = hsm_proxy.post(connection, "encrypt", encrypt_body(b"after"))
        assert status == 200
