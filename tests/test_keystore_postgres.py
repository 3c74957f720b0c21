"""A fleet on one real PostgreSQL: proxies follow every change within a second, serve from memory
through an outage (health DEGRADED, management refused with a clear message), resynchronise when
the database returns, and a writer killed mid-write loses nothing it acknowledged."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import KEY_BOTH, Deployment, make_deployment
from tests.postgres import PostgresServer
from tests.proxy_process import XKS_PROXY, ProxyProcess, close_all, connect, post
from tests.xks_client import HEALTH_BODY, METADATA_BODY, decrypt_body, encrypt_body, unb64
from xks_proxy import sigv4
from xks_proxy.backends.base import DECRYPT, ENCRYPT, HealthState
from xks_proxy.backends.software import SoftwareBackend
from xks_proxy.config import SoftwareBackendConfig
from xks_proxy.errors import KeyNotFoundError
from xks_proxy.keystore.store import KeyDatabase

BOTH = frozenset({ENCRYPT, DECRYPT})
PREFIX = "/keystores/dev/kms/xks/v1"
# Within a second (issue 12), plus the margin of a machine shared with other test runs.
PROPAGATION_BOUND_SECONDS = 1.0


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.02) -> float:
    """Seconds until ``check()`` held; fails the test after ``timeout``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - started


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [XKS_PROXY, *args], capture_output=True, text=True, timeout=60, check=False
    )


def credential(deployment: Deployment) -> sigv4.Credential:
    return deployment.config.key_stores[0].credentials[0]


def fleet_deployment(directory: Path, url: str) -> Deployment:
    # Health checked every second, so an outage shows in GetHealthStatus at once.
    return make_deployment(
        directory, database_url=url, **{"interval_seconds = 15": "interval_seconds = 1"}
    )


def key_status(port: int, deployment: Deployment, key_id: str) -> str:
    status, body = post(
        connect(port), f"{PREFIX}/keys/{key_id}/metadata", METADATA_BODY, credential(deployment)
    )
    assert status == 200, body
    return str(body["keyStatus"])


def health_state(port: int, deployment: Deployment) -> str:
    status, body = post(connect(port), f"{PREFIX}/health", HEALTH_BODY, credential(deployment))
    assert status == 200, body
    return str(body["ekmFleetDetails"][0]["healthStatus"])


# -- the backend in this process -------------------------------------------------------------


async def test_the_backend_unseals_lazily_into_a_bounded_cache(postgres_url: str) -> None:
    kek = os.urandom(32)
    writer = KeyDatabase(postgres_url, kek)
    for index in range(40):
        writer.create_key(f"k{index}", BOTH)
    writer.close()
    backend = SoftwareBackend(
        SoftwareBackendConfig("local", None, kek, database_url=postgres_url, key_cache_size=16)
    )
    await backend.open()
    try:
        cache = backend._cache
        assert cache is not None
        assert len(cache) == 1  # only the health key, to prove the KEK
        results = {}
        for index in range(40):
            results[index] = await backend.encrypt(f"k{index}", b"lazy", None)
            assert len(cache) <= 16
        for index, result in results.items():
            plaintext = await backend.decrypt(f"k{index}", result, None)
            assert plaintext == b"lazy"
        assert len(cache) == 16
    finally:
        await backend.close()


async def test_changes_reach_a_running_backend_and_an_outage_degrades_it(
    private_postgres: PostgresServer,
) -> None:
    url = private_postgres.url()
    kek = os.urandom(32)
    backend = SoftwareBackend(SoftwareBackendConfig("local", None, kek, database_url=url))
    await backend.open()
    writer = KeyDatabase(url, kek)
    try:
        writer.create_key("late", BOTH)
        started = time.monotonic()
        while True:
            try:
                await backend.describe_key("late")
                break
            except KeyNotFoundError:
                assert time.monotonic() - started < PROPAGATION_BOUND_SECONDS
                await asyncio.sleep(0.01)
        encrypted = await backend.encrypt("late", b"kept", None)

        private_postgres.stop()
        started = time.monotonic()
        while backend.store_problem is None:
            assert time.monotonic() - started < 5, "the outage went unnoticed"
            await asyncio.sleep(0.05)
        assert "unreachable" in backend.store_problem
        (health,) = await backend.check_health()
        assert health.state is HealthState.DEGRADED
        # Still serving from memory: the database is not in the request path.
        assert (await backend.describe_key("late")).enabled
        plaintext = await backend.decrypt("late", encrypted, None)
        assert plaintext == b"kept"

        private_postgres.start()
        writer.set_enabled("late", False)  # the writer reconnects by itself
        started = time.monotonic()
        while (await backend.describe_key("late")).enabled or backend.store_problem:
            assert time.monotonic() - started < 5, "no resynchronisation after the outage"
            await asyncio.sleep(0.05)
        (health,) = await backend.check_health()
        assert health.state is HealthState.ACTIVE
    finally:
        writer.close()
        await backend.close()


# -- proxy processes -------------------------------------------------------------------------


def both_see(deployment: Deployment, proxies: list[ProxyProcess], key_id: str, status: str) -> None:
    """Every proxy reports ``status`` for the key within the bound, counted from now."""

    def all_agree() -> bool:
        return all(key_status(p.port, deployment, key_id) == status for p in proxies)

    wait_until(all_agree, timeout=PROPAGATION_BOUND_SECONDS)


def test_a_disable_on_one_proxy_host_is_seen_by_another_within_a_second(
    tmp_path: Path, postgres_url: str
) -> None:
    deployment = fleet_deployment(tmp_path / "fleet", postgres_url)
    config = str(deployment.config_path)
    # Another host: its own copy of the deployment (pid file, audit log), the same database.
    other_host = Path(shutil.copytree(deployment.config_path.parent, tmp_path / "other-host"))
    try:
        with (
            ProxyProcess(deployment.config_path) as one,
            ProxyProcess(other_host / deployment.config_path.name) as two,
        ):
            for proxy in (one, two):
                assert key_status(proxy.port, deployment, KEY_BOTH) == "ENABLED"
            disabled = run_cli("keys", "disable", "--config", config, "--key-id", KEY_BOTH)
            assert disabled.returncode == 0, disabled.stderr
            both_see(deployment, [one, two], KEY_BOTH, "DISABLED")
            # A key created on "another host" is served by both.
            created = run_cli("keys", "create", "--config", config, "--key-id", "key-new")
            assert created.returncode == 0, created.stderr
            both_see(deployment, [one, two], "key-new", "ENABLED")
    finally:
        close_all()


def test_postgresql_stopped_under_load_fails_no_request(
    tmp_path: Path, private_postgres: PostgresServer
) -> None:
    deployment = fleet_deployment(tmp_path / "fleet", private_postgres.url())
    config = str(deployment.config_path)
    cred = credential(deployment)
    failures: list[str] = []
    served = 0
    stop = threading.Event()

    def load(port: int) -> None:
        nonlocal served
        connection = connect(port)
        while not stop.is_set():
            status, encrypted = post(
                connection, f"{PREFIX}/keys/{KEY_BOTH}/encrypt", encrypt_body(b"load"), cred
            )
            if status != 200:
                failures.append(f"encrypt {status} {encrypted}")
                continue
            status, decrypted = post(
                connection, f"{PREFIX}/keys/{KEY_BOTH}/decrypt", decrypt_body(encrypted), cred
            )
            if status != 200 or unb64(decrypted["plaintext"]) != b"load":
                failures.append(f"decrypt {status} {decrypted}")
            served += 2

    try:
        with ProxyProcess(deployment.config_path) as proxy:
            worker = threading.Thread(target=load, args=(proxy.port,), daemon=True)
            worker.start()
            wait_until(lambda: served > 20, timeout=30)
            private_postgres.stop()
            wait_until(lambda: health_state(proxy.port, deployment) == "DEGRADED", timeout=10)
            proxy.wait_for("serving the keys in memory")

            refused = run_cli("keys", "disable", "--config", config, "--key-id", KEY_BOTH)
            assert refused.returncode == 1
            assert "is unreachable" in refused.stderr
            assert "Traceback" not in refused.stderr
            during_outage = served
            wait_until(lambda: served > during_outage + 20, timeout=30)

            private_postgres.start()
            wait_until(lambda: health_state(proxy.port, deployment) == "ACTIVE", timeout=10)
            proxy.wait_for("reachable again")
            rotated = run_cli("keys", "rotate", "--config", config, "--key-id", KEY_BOTH)
            assert rotated.returncode == 0, rotated.stderr
            stop.set()
            worker.join(timeout=30)
            assert not worker.is_alive()
            # After recovery, the proxy encrypts under the version made after the outage.
            wait_until(
                lambda: _encrypted_version(proxy.port, cred) == 2,
                timeout=PROPAGATION_BOUND_SECONDS,
            )
    finally:
        stop.set()
        close_all()
    assert failures == []
    assert served > 40


def _encrypted_version(port: int, cred: sigv4.Credential) -> int:
    from xks_proxy.aad import CiphertextMetadata

    status, body = post(
        connect(port), f"{PREFIX}/keys/{KEY_BOTH}/encrypt", encrypt_body(b"v"), cred
    )
    assert status == 200
    return CiphertextMetadata.decode(unb64(body["ciphertextMetadata"])).key_version


def test_writers_killed_mid_write_lose_nothing_they_acknowledged(
    tmp_path: Path, postgres_url: str
) -> None:
    deployment = fleet_deployment(tmp_path / "fleet", postgres_url)
    config = str(deployment.config_path)
    writers: list[tuple[str, subprocess.Popen[str]]] = []
    for index in range(12):
        key_id = f"key-written-{index}"
        command = [XKS_PROXY, "keys", "create", "--config", config, "--key-id", key_id]
        writers.append(
            (
                key_id,
                subprocess.Popen(
                    command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                ),
            )
        )
    # Kill every other writer at a staggered moment: before, during or after its transaction.
    for index, (_, process) in enumerate(writers):
        if index % 2:
            time.sleep(0.05 * index)
            process.send_signal(signal.SIGKILL)
    acknowledged = []
    for key_id, process in writers:
        out, _ = process.communicate(timeout=60)
        if process.returncode == 0 and f"created key {key_id}" in out:
            acknowledged.append(key_id)
        else:
            assert process.returncode in (0, -signal.SIGKILL), out
    assert len(acknowledged) >= 6  # the writers nobody killed
    database = KeyDatabase(postgres_url, deployment.config.backends["local"].kek)  # type: ignore[union-attr]
    try:
        stored: dict[str, Any] = {k.key_id: k for k in database.load()}
    finally:
        database.close()
    for key_id in acknowledged:
        assert key_id in stored and len(stored[key_id].versions[1]) == 32
    # Whatever a killed writer left is whole: a key with its version, or nothing.
    for key in stored.values():
        assert sorted(key.versions) == list(range(1, len(key.versions) + 1))


@pytest.mark.parametrize("kek_check", [True, False])
def test_keys_migrate_moves_a_store_and_old_ciphertexts_decrypt(
    tmp_path: Path, postgres_url: str, kek_check: bool
) -> None:
    """SQLite deployment → PostgreSQL, without re-keying: yesterday's ciphertext decrypts."""
    deployment = make_deployment(tmp_path / "embedded")
    cred = credential(deployment)
    with ProxyProcess(deployment.config_path) as proxy:
        status, encrypted = post(
            connect(proxy.port), f"{PREFIX}/keys/{KEY_BOTH}/encrypt", encrypt_body(b"old"), cred
        )
        assert status == 200
    close_all()
    key_db = deployment.directory / "keys.db"
    os.environ["XKS_TEST_MIGRATE_TO"] = postgres_url
    try:
        check = ["--config", str(deployment.config_path)] if kek_check else []
        moved = run_cli(
            "keys",
            "migrate",
            "--from",
            f"sqlite:{key_db}",
            "--to",
            "env:XKS_TEST_MIGRATE_TO",
            *check,
        )
        assert moved.returncode == 0, moved.stderr
        assert "copied 6 keys (6 versions)" in moved.stdout
        again = run_cli("keys", "migrate", "--from", f"sqlite:{key_db}", "--to", postgres_url)
        assert again.returncode == 1 and "already has key" in again.stderr
    finally:
        del os.environ["XKS_TEST_MIGRATE_TO"]
    text = deployment.config_path.read_text().replace(
        'path = "keys.db"', f'database_url = "{postgres_url}"'
    )
    deployment.config_path.write_text(text)
    key_db.unlink()
    with ProxyProcess(deployment.config_path) as proxy:
        assert key_status(proxy.port, deployment, "key-disabled") == "DISABLED"
        status, decrypted = post(
            connect(proxy.port), f"{PREFIX}/keys/{KEY_BOTH}/decrypt", decrypt_body(encrypted), cred
        )
        assert status == 200 and unb64(decrypted["plaintext"]) == b"old"
    close_all()


def test_keys_migrate_refuses_a_store_sealed_under_another_kek(
    tmp_path: Path, postgres_url: str
) -> None:
    stranger = make_deployment(tmp_path / "stranger")
    ours = make_deployment(tmp_path / "ours")
    moved = run_cli(
        "keys", "migrate", "--from", f"sqlite:{stranger.directory / 'keys.db'}",
        "--to", postgres_url, "--config", str(ours.config_path),
    )  # fmt: skip
    assert moved.returncode == 2 and "wrong kek" in moved.stderr
    database = KeyDatabase(postgres_url, None)
    try:
        assert database.records() == []  # nothing was written
    finally:
        database.close()


def test_without_its_store_a_proxy_refuses_to_start_and_commands_say_why(
    tmp_path: Path, postgres_url: str, reserve_port: Callable[[], int]
) -> None:
    deployment = make_deployment(tmp_path / "d", database_url=postgres_url)
    config = deployment.config_path
    gone = f"postgresql://postgres:pw-not-shown@127.0.0.1:{reserve_port()}/gone"
    config.write_text(config.read_text().replace(postgres_url, gone))
    for command in (
        ["serve", "--config", str(config), "--port", "0"],
        ["check-config", "--config", str(config)],
        ["keys", "list", "--config", str(config)],
    ):
        result = run_cli(*command)
        assert result.returncode in (1, 2), (command, result.stderr)
        assert "is unreachable" in result.stderr, (command, result.stderr)
        assert "Traceback" not in result.stderr and "pw-not-shown" not in result.stderr


async def test_a_change_without_a_notification_is_found_by_the_poll(postgres_url: str) -> None:
    """The fallback: a write whose NOTIFY never arrives still reaches the proxy within ~1 s."""
    kek = os.urandom(32)
    writer = KeyDatabase(postgres_url, kek)
    writer.create_key("quiet", BOTH)
    backend = SoftwareBackend(SoftwareBackendConfig("local", None, kek, database_url=postgres_url))
    await backend.open()
    try:
        # A write behind the store's back: revision bumped, no pg_notify.
        with psycopg.connect(postgres_url, autocommit=True) as raw:
            raw.execute(
                "WITH next AS (UPDATE store_meta SET revision = revision + 1 RETURNING revision) "
                "UPDATE keys SET enabled = 0, revision = (SELECT revision FROM next) "
                "WHERE key_id = 'quiet'"
            )
        started = time.monotonic()
        while (await backend.describe_key("quiet")).enabled:
            # One poll interval, plus the margin of a busy machine.
            assert time.monotonic() - started < 3, "the poll never found the change"
            await asyncio.sleep(0.05)
    finally:
        writer.close()
        await backend.close()
