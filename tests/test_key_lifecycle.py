"""Scheduled deletion, as KMS does it: a 7-30 day window with the key DISABLED, cancellation that
leaves it DISABLED, a sweeper that purges each key once however many proxies sweep, and an audit
line for every action (refusals included)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import KEY_BOTH, lifecycle_audit_lines, make_deployment
from tests.proxy_process import XKS_PROXY, ProxyProcess, close_all, connect, post
from tests.xks_client import METADATA_BODY, encrypt_body
from xks_proxy.backends.base import DECRYPT, ENCRYPT
from xks_proxy.backends.software import SoftwareBackend
from xks_proxy.config import AuditConfig, SoftwareBackendConfig
from xks_proxy.errors import KeyNotFoundError
from xks_proxy.keymgmt.audit import LifecycleAudit
from xks_proxy.keymgmt.service import KeyManager
from xks_proxy.keystore.store import KeyDatabase, KeyStateError, UnknownKeyError

BOTH = frozenset({ENCRYPT, DECRYPT})
PREFIX = "/keystores/dev/kms/xks/v1"


def manager(database: KeyDatabase, audit_path: Path) -> KeyManager:
    return KeyManager(database, LifecycleAudit(AuditConfig(path=str(audit_path))), "tester@host")


def test_the_deletion_window_disables_refuses_changes_and_cancels_to_disabled(
    location: str, tmp_path: Path
) -> None:
    database = KeyDatabase(location, os.urandom(32))
    audit = tmp_path / "audit.log"
    keys = manager(database, audit)
    try:
        keys.create("doomed", BOTH)
        now = datetime(2026, 1, 1, tzinfo=UTC)
        assert keys.schedule_deletion("doomed", 7, now=now) == now + timedelta(days=7)
        (record,) = keys.keys()
        assert not record.enabled and record.deletion_date == "2026-01-08T00:00:00+00:00"
        for change in (keys.enable, keys.disable, keys.rotate):
            with pytest.raises(KeyStateError, match="pending deletion on 2026-01-08"):
                change("doomed")
        with pytest.raises(KeyStateError, match="pending deletion"):
            keys.schedule_deletion("doomed", 30)
        for days in (6, 31):
            with pytest.raises(ValueError, match="7 to 30 days"):
                keys.schedule_deletion("doomed", days)
        keys.cancel_deletion("doomed")
        (record,) = keys.keys()
        assert not record.enabled and record.deletion_date is None  # still DISABLED, as KMS
        with pytest.raises(KeyStateError, match="not pending deletion"):
            keys.cancel_deletion("doomed")
        with pytest.raises(UnknownKeyError):
            keys.schedule_deletion("absent", 7)
        keys.enable("doomed")
        assert keys.keys()[0].enabled
    finally:
        database.close()
    lines = lifecycle_audit_lines(audit)
    outcomes = [(line["action"], line["outcome"]) for line in lines]
    assert outcomes[:2] == [("create", "success"), ("schedule-deletion", "success")]
    assert ("rotate", "refused") in outcomes and ("cancel-deletion", "success") in outcomes
    assert outcomes[-1] == ("enable", "success")
    assert all(line["actor"] == "tester@host" and line["keyId"] for line in lines)
    assert (
        "pending deletion" in next(line for line in lines if line["outcome"] == "refused")["detail"]
    )


def test_the_sweeper_purges_each_due_key_once_with_several_sweepers(postgres_url: str) -> None:
    kek = os.urandom(32)
    setup = KeyDatabase(postgres_url, kek)
    for index in range(10):
        setup.create_key(f"k{index}", BOTH)
    for index in range(6):
        setup.schedule_deletion(f"k{index}", datetime.now(UTC) + timedelta(days=7))
    setup.close()
    later = datetime.now(UTC) + timedelta(days=8)
    purged: list[str] = []
    errors: list[BaseException] = []

    def sweep() -> None:
        database = KeyDatabase(postgres_url, kek)
        try:
            purged.extend(database.purge_due(later))
        except BaseException as error:
            errors.append(error)
        finally:
            database.close()

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(purged) == [f"k{index}" for index in range(6)]
    database = KeyDatabase(postgres_url, kek)
    try:
        assert sorted(k.key_id for k in database.records()) == [f"k{i}" for i in range(6, 10)]
        assert database.purge_due(later) == []
        with pytest.raises(KeyStateError, match="never reused"):
            database.create_key("k0", BOTH)
    finally:
        database.close()


async def test_a_running_proxy_drops_a_key_another_host_purged(postgres_url: str) -> None:
    kek = os.urandom(32)
    writer = KeyDatabase(postgres_url, kek)
    writer.create_key("short-lived", BOTH)
    backend = SoftwareBackend(SoftwareBackendConfig("local", None, kek, database_url=postgres_url))
    await backend.open()
    try:
        await backend.encrypt("short-lived", b"x", None)
        writer.schedule_deletion("short-lived", datetime.now(UTC) + timedelta(days=7))
        assert writer.purge_due(datetime.now(UTC) + timedelta(days=8)) == ["short-lived"]
        started = time.monotonic()
        while True:
            try:
                await backend.describe_key("short-lived")
            except KeyNotFoundError:
                break
            assert time.monotonic() - started < 1.0, "the purge did not reach the proxy"
            await asyncio.sleep(0.01)
    finally:
        writer.close()
        await backend.close()


def test_cli_schedule_deletion_makes_the_proxy_refuse_the_key(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path / "d")
    config = str(deployment.config_path)
    credential = deployment.config.key_stores[0].credentials[0]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [XKS_PROXY, "keys", *args, "--config", config],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    try:
        with ProxyProcess(deployment.config_path) as proxy:
            scheduled = cli("schedule-deletion", "--key-id", KEY_BOTH, "--days", "7")
            assert scheduled.returncode == 0, scheduled.stderr
            assert "will be deleted after" in scheduled.stdout

            def metadata() -> dict[str, Any]:
                path = f"{PREFIX}/keys/{KEY_BOTH}/metadata"
                return post(connect(proxy.port), path, METADATA_BODY, credential)[1]

            started = time.monotonic()
            while metadata()["keyStatus"] != "DISABLED":
                assert time.monotonic() - started < 5
                time.sleep(0.05)
            status, body = post(
                connect(proxy.port), f"{PREFIX}/keys/{KEY_BOTH}/encrypt", encrypt_body(b"x"),
                credential,
            )  # fmt: skip
            assert status == 400 and body["errorName"] == "InvalidStateException"
    finally:
        close_all()
    listed = json.loads(cli("list", "--json").stdout)
    (row,) = [r for r in listed if r["keyId"] == KEY_BOTH]
    assert row["keyStatus"] == "PENDING_DELETION" and row["deletionDate"]
    refused = cli("rotate", "--key-id", KEY_BOTH)
    assert refused.returncode == 1 and "pending deletion" in refused.stderr
    for days in ("6", "31"):
        bad = cli("schedule-deletion", "--key-id", "key-disabled", "--days", days)
        assert bad.returncode == 2 and "--days: 7 to 30" in bad.stderr
    cancelled = cli("cancel-deletion", "--key-id", KEY_BOTH)
    assert cancelled.returncode == 0 and "stays DISABLED" in cancelled.stdout
    listed = json.loads(cli("list", "--json").stdout)
    (row,) = [r for r in listed if r["keyId"] == KEY_BOTH]
    assert row["keyStatus"] == "DISABLED" and row["deletionDate"] is None
    lines = lifecycle_audit_lines(deployment.directory / "audit.log")
    assert [(line["action"], line["outcome"]) for line in lines] == [
        ("schedule-deletion", "success"),
        ("rotate", "refused"),
        ("cancel-deletion", "success"),
    ]
    assert all("@" in line["actor"] for line in lines)
