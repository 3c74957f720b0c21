"""A failing audit volume never costs a request its JSON answer (issue 9, finding 1).

Real failing files, no mocks: ``/dev/full`` (ENOSPC on every write), an audit path that became a
directory (EISDIR when the rotated file is reopened) and, where root may mount one, a full tmpfs
that gets room again. Requests go over real HTTP to the in-process app.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from tests.conftest import KEY_BOTH, Deployment, make_deployment
from tests.test_hardening_transport import SECRET, SECRET_B64
from tests.test_transport import metric_value
from tests.xks_client import HEALTH_BODY, XksClient, decrypt_body, encrypt_body
from xks_proxy import audit
from xks_proxy.config import AuditConfig, load_config
from xks_proxy.errors import ConfigError
from xks_proxy.runtime import ProxyRuntime
from xks_proxy.throttled_log import ThrottledWarning
from xks_proxy.web.app import create_app


async def _audited_client(
    deployment: Deployment,
    aiohttp_client: Any,
    path: str,
    on_failure: str = AuditConfig.on_failure,
) -> tuple[ProxyRuntime, XksClient]:
    config = replace(deployment.config, audit=AuditConfig(path=path, on_failure=on_failure))
    runtime = ProxyRuntime(config)
    client = await aiohttp_client(create_app(runtime))
    store = config.key_stores[0]
    return runtime, XksClient(client, store.uri_path, store.region, store.credentials[0])


def _failures(runtime: ProxyRuntime) -> float:
    text = generate_latest(runtime.metrics.registry).decode()
    return metric_value(text, "xks_audit_write_failures_total")


def _audit_reports(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "cannot write the audit log" in r.getMessage()]


def _directory_at(path: Path) -> None:
    """Logrotate moved the file away and something made a directory in its place."""
    path.unlink()
    path.mkdir()


def _dev_full(tmp: Path) -> tuple[str, Callable[[], None]]:
    return "/dev/full", lambda: None


def _replaced_by_directory(tmp: Path) -> tuple[str, Callable[[], None]]:
    return str(tmp / "audit.log"), lambda: _directory_at(tmp / "audit.log")


# Real failing files: every write gets ENOSPC; or the reopen after rotation gets EISDIR.
AUDIT_FAULTS = {"/dev/full": _dev_full, "directory": _replaced_by_directory}


@pytest.mark.parametrize("fault", sorted(AUDIT_FAULTS))
async def test_a_failing_audit_write_still_answers_by_default(
    fault: str,
    software_deployment: Deployment,
    tmp_path: Path,
    aiohttp_client: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(audit, "ROTATION_CHECK_SECONDS", 0.0)
    path, break_it = AUDIT_FAULTS[fault](tmp_path)
    runtime, xks = await _audited_client(software_deployment, aiohttp_client, path)  # default
    break_it()
    caplog.set_level(logging.WARNING)
    encrypted = await xks.call("encrypt", KEY_BOTH, encrypt_body(SECRET))
    for _ in range(4):
        await xks.call("encrypt", KEY_BOTH, encrypt_body(SECRET))
    await xks.call("decrypt", KEY_BOTH, decrypt_body(encrypted))
    response = await xks.post("encrypt", KEY_BOTH, encrypt_body(SECRET), region="eu-west-1")
    assert response.status == 401 and response.content_type == "application/json"
    assert _failures(runtime) == 7
    reports = _audit_reports(caplog)
    assert len(reports) == 1 and reports[0].exc_info is None
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("fault", sorted(AUDIT_FAULTS))
async def test_refuse_withholds_successful_answers_when_the_audit_write_fails(
    fault: str,
    software_deployment: Deployment,
    tmp_path: Path,
    aiohttp_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(audit, "ROTATION_CHECK_SECONDS", 0.0)
    path, break_it = AUDIT_FAULTS[fault](tmp_path)
    runtime, xks = await _audited_client(
        software_deployment, aiohttp_client, path, on_failure="refuse"
    )
    break_it()
    for operation, key_id, document in (
        ("encrypt", KEY_BOTH, encrypt_body(SECRET)),
        ("health", None, HEALTH_BODY),
    ):
        response = await xks.post(operation, key_id, document)
        assert response.status == 500 and response.content_type == "application/json"
        answer = await response.read()
        assert json.loads(answer)["errorName"] == "InternalException"
        assert SECRET_B64 not in answer and b"ciphertext" not in answer
    # an error answer releases nothing: it goes out as it is
    response = await xks.post("encrypt", KEY_BOTH, encrypt_body(SECRET), region="eu-west-1")
    assert response.status == 401
    assert _failures(runtime) == 3
    text = generate_latest(runtime.metrics.registry).decode()
    internal = [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("xks_errors_total{") and 'error_name="InternalException"' in line
    ]
    assert sum(internal) == 2


def test_a_repeated_warning_is_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    warning = ThrottledWarning(logging.getLogger("throttled"), interval=60, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, "throttled")
    for _ in range(3):
        warning.warn("disk %s is full", "audit")
    now[0] += 59
    warning.warn("disk %s is full", "audit")
    assert [r.getMessage() for r in caplog.records] == ["disk audit is full"]
    now[0] += 1
    warning.warn("disk %s is full", "audit")
    assert caplog.records[-1].getMessage() == "disk audit is full (3 more since the last report)"


def _mount_tmpfs(target: Path, size: str) -> bool:
    target.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
        capture_output=True,
        check=False,
    )
    return mounted.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
async def test_a_full_audit_volume_recovers_with_whole_lines(
    software_deployment: Deployment, tmp_path: Path, aiohttp_client: Any
) -> None:
    volume = tmp_path / "volume"
    if not _mount_tmpfs(volume, "64k"):
        # a container without CAP_SYS_ADMIN; /dev/full above still covers the failing write
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        filler = volume / "filler"
        runtime, xks = await _audited_client(
            software_deployment, aiohttp_client, str(volume / "audit.log")
        )
        for _ in range(3):  # the log's last page is partly used: a later line may be cut short
            await xks.call("encrypt", KEY_BOTH, encrypt_body(SECRET))
        with contextlib.suppress(OSError), filler.open("wb", buffering=0) as out:
            while True:  # fill the volume up to its last byte
                out.write(b"f" * 512)
        for _ in range(12):
            await xks.call("encrypt", KEY_BOTH, encrypt_body(SECRET))
        failed = _failures(runtime)
        assert failed >= 1
        filler.unlink()
        for _ in range(3):
            await xks.call("encrypt", KEY_BOTH, encrypt_body(SECRET))
        assert _failures(runtime) == failed
        lines = [line for line in (volume / "audit.log").read_bytes().split(b"\n") if line]
        # a line cut short by the full volume stays on a line of its own
        assert all(line.count(b'{"time"') == 1 for line in lines), lines
        whole = [json.loads(line) for line in lines if line.endswith(b"}")]
        assert len(whole) >= 3 + 3 and all(r["outcome"] == "success" for r in whole)
    finally:
        subprocess.run(["umount", "-l", str(volume)], check=False)


def test_on_failure_accepts_only_continue_or_refuse(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path)
    path = deployment.config_path
    text = path.read_text()
    assert "[audit]\n" in text
    path.write_text(text.replace("[audit]\n", '[audit]\non_failure = "refuse"\n'))
    assert load_config(path).audit.on_failure == "refuse"
    path.write_text(text.replace("[audit]\n", '[audit]\non_failure = "ignore"\n'))
    with pytest.raises(ConfigError, match=r"audit\.on_failure: must be one of continue, refuse"):
        load_config(path)
    path.write_text(text)
    assert load_config(path).audit.on_failure == "continue"
