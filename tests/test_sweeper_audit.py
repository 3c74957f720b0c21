"""The sweeper's deletions are audited: a key past its deletion date purged, imported material past
``--valid-to`` deleted, an import token's wrapping key expired unused. Each is one
``keyLifecycle`` line whose actor is the sweeper (host and pid), written exactly once however many
proxies sweep the store at the same time."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.conftest import lifecycle_audit_lines
from xks_proxy.backends.base import DECRYPT, ENCRYPT
from xks_proxy.backends.software import SoftwareBackend
from xks_proxy.config import AuditConfig, SoftwareBackendConfig
from xks_proxy.keymgmt.audit import LifecycleAudit
from xks_proxy.keymgmt.service import KeyManager
from xks_proxy.keystore.records import ORIGIN_EXTERNAL, KeyRecord
from xks_proxy.keystore.sealing import KEY_BYTES
from xks_proxy.keystore.store import KeyDatabase

BOTH = frozenset({ENCRYPT, DECRYPT})
SWEEPERS = 4
# What one store holds due at once: (action, key id) of every audit line a sweep must write.
EXPECTED = sorted(
    [("purge", f"gone-{i}") for i in range(3)]
    + [("expire-material", f"expired-{i}") for i in range(2)]
    + [("expire-import-parameters", "pending")]
)


def fill_due(location: str, kek: bytes, tmp_path: Path) -> None:
    """Keys past their deletion date, imported material past ``valid_to``, and an import token
    (with its wrapping key) that expired unused."""
    database = KeyDatabase(location, kek)
    setup = KeyManager(database, LifecycleAudit(AuditConfig(path=str(tmp_path / "setup.log"))), "t")
    past = datetime.now(UTC) - timedelta(seconds=5)
    try:
        # First: making import parameters sweeps the store's expired imports (audited).
        setup.create_external("pending", BOTH)
        setup.import_parameters(
            "pending", "RSAES_OAEP_SHA_256", "RSA_2048", now=datetime.now(UTC) - timedelta(hours=25)
        )
        for index in range(3):
            database.create_key(f"gone-{index}", BOTH)
            database.schedule_deletion(f"gone-{index}", past)
        database.copy_records(
            KeyRecord(
                key_id,
                BOTH,
                True,
                False,
                past.isoformat(),
                {1: database.sealer.seal(key_id, 1, os.urandom(KEY_BYTES))},
                origin=ORIGIN_EXTERNAL,
                valid_to=past.isoformat(timespec="seconds"),
            )
            for key_id in ("expired-0", "expired-1")
        )
    finally:
        database.close()


def sweep_lines(audit: Path) -> list[dict[str, Any]]:
    if not audit.exists():
        return []
    sweeps = {action for action, _ in EXPECTED}
    return [line for line in lifecycle_audit_lines(audit) if line["action"] in sweeps]


def test_several_sweepers_at_once_audit_each_deletion_once(location: str, tmp_path: Path) -> None:
    kek = os.urandom(32)
    fill_due(location, kek, tmp_path)
    audit = tmp_path / "audit.log"
    start = threading.Barrier(SWEEPERS)
    errors: list[BaseException] = []

    def sweep(index: int) -> None:
        database = KeyDatabase(location, kek)
        keys = KeyManager(
            database, LifecycleAudit(AuditConfig(path=str(audit))), f"sweeper {index}"
        )
        try:
            start.wait(timeout=30)
            keys.sweep()
        except BaseException as error:
            errors.append(error)
        finally:
            database.close()

    threads = [threading.Thread(target=sweep, args=(i,)) for i in range(SWEEPERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    lines = sweep_lines(audit)
    assert sorted((line["action"], line["keyId"]) for line in lines) == EXPECTED
    assert all(line["outcome"] == "success" for line in lines)
    database = KeyDatabase(location, kek)
    try:
        remaining = {r.key_id: r for r in database.records() if not r.internal}
        assert not any(key_id.startswith("gone-") for key_id in remaining)
        assert not remaining["expired-0"].versions and not remaining["expired-1"].versions
    finally:
        database.close()


async def test_proxies_sweeping_one_store_write_each_line_once_as_the_sweeper(
    postgres_url: str, tmp_path: Path
) -> None:
    kek = os.urandom(32)
    fill_due(postgres_url, kek, tmp_path)
    audit = tmp_path / "audit.log"
    config = SoftwareBackendConfig("local", None, kek, database_url=postgres_url)
    backends = [SoftwareBackend(config) for _ in range(3)]
    for backend in backends:
        backend.audit_lifecycle_to(LifecycleAudit(AuditConfig(path=str(audit))))
    # Each backend sweeps as soon as it is open: three sweeps of one store at once.
    await asyncio.gather(*(backend.open() for backend in backends))
    try:
        deadline = time.monotonic() + 10
        while len(sweep_lines(audit)) < len(EXPECTED) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # any duplicate would be written by now
        lines = sweep_lines(audit)
        assert sorted((line["action"], line["keyId"]) for line in lines) == EXPECTED
        actor = f"sweeper@{socket.gethostname()} (pid {os.getpid()})"
        assert {line["actor"] for line in lines} == {actor}
    finally:
        for backend in backends:
            await backend.close()
