"""A version first unsealed under an HSM KEK is unwrapped in a thread, never on the event loop.

In process, on the real SoftHSM2 token of the session (``softhsm``): a KEK of its own label in the
conformance token, the store rewrapped under it by the ``keys rewrap`` command, and a
``SoftwareBackend`` serving from it. The unwrap is watched by wrapping the sealer's own unwrap
(the call still goes to the token): held open, it shows the loop serving other keys meanwhile.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from pkcs11 import ObjectClass

from tests.conftest import CONFORMANCE_TOKEN, KEY_BOTH, KEY_ENCRYPT_ONLY, make_deployment
from tests.proxy_process import XKS_PROXY
from tests.softhsm import USER_PIN, SoftHsm
from xks_proxy.backends.base import HealthState
from xks_proxy.backends.software import SoftwareBackend
from xks_proxy.config import SoftwareBackendConfig, load_config
from xks_proxy.errors import InternalError
from xks_proxy.kek_config import Pkcs11Kek, parse_kek_setting
from xks_proxy.keystore.hsm_kek import create_kek, open_session
from xks_proxy.keystore.records import SealedVersion

PIN_ENV = "XKS_TEST_OFF_LOOP_KEK_PIN"


class Hsm:
    """A KEK in the session's token, made for one test."""

    def __init__(self, softhsm: SoftHsm, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(PIN_ENV, USER_PIN)
        self.label = f"kek-{uuid.uuid4().hex[:12]}"
        self.uri = (
            f"pkcs11:token={CONFORMANCE_TOKEN};object={self.label}"
            f"?module-path={softhsm.module}&pin-source=env:{PIN_ENV}"
        )
        kek = parse_kek_setting(self.uri, "kek", Path("."), {PIN_ENV: USER_PIN})
        assert isinstance(kek, Pkcs11Kek)
        self.kek = kek
        create_kek(kek)

    def destroy_kek(self) -> None:
        """The KEK gone from the token, as a lost or zeroised HSM key would be."""
        session = open_session(self.kek, rw=True)
        try:
            session.get_key(object_class=ObjectClass.SECRET_KEY, label=self.label).destroy()
        finally:
            session.close()


@pytest.fixture
async def backend(
    tmp_path: Path, softhsm: SoftHsm, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[SoftwareBackend, Hsm]]:
    hsm = Hsm(softhsm, monkeypatch)
    deployment = make_deployment(tmp_path / "d")
    config = str(deployment.config_path)
    done = subprocess.run(
        [XKS_PROXY, "keys", "rewrap", "--config", config, "--new-kek", hsm.uri],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = deployment.config_path.read_text()
    deployment.config_path.write_text(
        re.sub(r'^kek = ".*"$', f'kek = "{hsm.uri}"', text, count=1, flags=re.M)
    )
    settings = load_config(deployment.config_path).backends["local"]
    assert isinstance(settings, SoftwareBackendConfig)
    served = SoftwareBackend(settings)
    await served.open()
    try:
        yield served, hsm
    finally:
        await served.close()


Unseal = Callable[[SealedVersion, bytes], "bytes | None"]


def watch_unwraps(backend: SoftwareBackend, hold: threading.Event | None = None) -> list[int]:
    """The thread of every unwrap from now on; with ``hold``, each waits for it to be set."""
    sealer = backend.database.sealer
    unwrap: Unseal = sealer._unseal  # the real unwrap, watched
    threads: list[int] = []

    def watched(sealed: SealedVersion, binding: bytes) -> bytes | None:
        threads.append(threading.get_ident())
        if hold is not None:
            assert hold.wait(10), "the test never let the unwrap finish"
        return unwrap(sealed, binding)

    sealer._unseal = watched  # type: ignore[method-assign]
    return threads


async def wait_for(predicate: Callable[[], bool]) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never happened")


async def test_a_cache_miss_unwraps_in_a_thread_while_the_loop_serves_other_keys(
    backend: tuple[SoftwareBackend, Hsm],
) -> None:
    served, _ = backend
    warm = await served.encrypt(KEY_BOTH, b"unsealed already", None)
    loop_thread = threading.get_ident()
    hold = threading.Event()
    threads = watch_unwraps(served, hold)

    # Several requests miss on the same version at once: they share one unwrap.
    first_use = [
        asyncio.create_task(served.encrypt(KEY_ENCRYPT_ONLY, f"first use {n}".encode(), None))
        for n in range(5)
    ]
    await wait_for(lambda: len(threads) == 1)
    # The unwrap is under way and held: the loop still serves the key it has.
    assert await served.decrypt(KEY_BOTH, warm, None) == b"unsealed already"
    assert await served.encrypt(KEY_BOTH, b"meanwhile", None)
    assert not any(task.done() for task in first_use)
    hold.set()
    sealed = await asyncio.gather(*first_use)
    assert threads != [] and loop_thread not in threads
    assert len(threads) == 1  # five misses, one call to the token
    assert len({item.ciphertext for item in sealed}) == 5
    # The version is cached now: no further unwrap.
    await served.encrypt(KEY_ENCRYPT_ONLY, b"cached", None)
    assert len(threads) == 1


async def test_a_lost_kek_fails_uncached_versions_retryably_and_health_says_why(
    backend: tuple[SoftwareBackend, Hsm],
) -> None:
    served, hsm = backend
    warm = await served.encrypt(KEY_BOTH, b"unsealed already", None)
    threads = watch_unwraps(served)
    hsm.destroy_kek()

    with pytest.raises(InternalError):  # the key exists: never KeyNotFound
        await served.encrypt(KEY_ENCRYPT_ONLY, b"not yet unsealed", None)
    assert threads and threading.get_ident() not in threads
    assert await served.decrypt(KEY_BOTH, warm, None) == b"unsealed already"
    (health,) = await served.check_health()
    assert health.state == HealthState.DEGRADED
    assert served.store_problem is not None
    assert f"the token has no key labelled {hsm.label!r}" in served.store_problem
