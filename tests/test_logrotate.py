"""The shipped ``deploy/logrotate/xks-proxy`` policy, run by the real ``logrotate`` (with
``compress`` and no ``delaycompress``) three times while ``xks-proxy loadtest`` drives a
two-worker proxy: every request answered has its audit line, in the live file or in one of the
compressed ones. Its ``postrotate`` runs ``xks-proxy reopen-logs`` (SIGUSR1, forwarded by the
supervisor to every worker).

Each rotation runs during a burst of load of its own, once that burst has written to the live
file (logrotate skips an empty file). Rotations are not timed against one long load run: on a
busy machine the run could end before the last rotation, leaving nothing to rotate."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import time
from pathlib import Path

from tests.conftest import KEY_BOTH, make_deployment
from tests.proxy_process import XKS_PROXY, ProxyProcess

LOGROTATE = shutil.which("logrotate") or shutil.which("logrotate", path="/usr/sbin:/sbin")
POLICY = Path(__file__).resolve().parents[1] / "deploy" / "logrotate" / "xks-proxy"
RATE = 100
BURST_SECONDS = 3
ROTATIONS = 3


def _policy_for(audit: Path, config: Path) -> str:
    """The shipped policy with this deployment's audit file and configuration."""
    text = POLICY.read_text()
    for shipped, here in (
        ("/var/log/xks-proxy/audit.log", str(audit)),
        ("/opt/xks-proxy/bin/xks-proxy", XKS_PROXY),
        ("/etc/xks-proxy/xks-proxy.toml", str(config)),
    ):
        assert shipped in text
        text = text.replace(shipped, here)
    return text


def _audit_lines(directory: Path) -> list[dict[str, object]]:
    lines: list[str] = []
    for path in directory.glob("audit.log*"):
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        lines += data.decode().splitlines()
    return [json.loads(line) for line in lines]


def test_logrotate_with_compress_under_load_loses_no_audit_line(tmp_path: Path) -> None:
    assert LOGROTATE is not None, "make test installs it (scripts/install-system-deps.sh)"
    deployment = make_deployment(
        tmp_path / "proxy",
        **{"max_body_bytes = 65536": "max_body_bytes = 65536\nshutdown_delay_seconds = 0"},
    )
    audit = Path(deployment.config.audit.path)
    policy = tmp_path / "logrotate.conf"
    policy.write_text(_policy_for(audit, deployment.config_path))
    policy.chmod(0o644)
    kms_config = tmp_path / "kms-config.json"
    kms_config.write_text(
        subprocess.run(
            [XKS_PROXY, "kms-config", "--config", str(deployment.config_path)],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
    )  # fmt: skip
    completed = 0
    with ProxyProcess(deployment.config_path, "--workers", "2") as proxy:
        proxy.wait_for("key store", count=2)
        for _ in range(ROTATIONS):
            completed += _rotate_during_a_burst(proxy.port, kms_config, audit, policy, tmp_path)
        assert proxy.stop() == 0
    compressed = sorted(audit.parent.glob("audit.log.*.gz"))
    assert len(compressed) == ROTATIONS, compressed
    records = _audit_lines(audit.parent)
    assert len(records) == completed == RATE * BURST_SECONDS * ROTATIONS
    assert all(record["xksOperation"] == "Encrypt" for record in records)
    assert "Traceback" not in proxy.log


def _rotate_during_a_burst(
    port: int, kms_config: Path, audit: Path, policy: Path, tmp_path: Path
) -> int:
    """Run logrotate while a burst of load runs; the number of requests the burst completed."""
    assert LOGROTATE is not None
    loadtest = subprocess.Popen(
        [XKS_PROXY, "loadtest", "--url", f"http://127.0.0.1:{port}",
         "--kms-config", str(kms_config), "--key-id", KEY_BOTH, "--rate", str(RATE),
         "--duration", str(BURST_SECONDS), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (audit.exists() and audit.stat().st_size):
            assert time.monotonic() < deadline, "the burst wrote no audit line in 60 s"
            time.sleep(0.05)
        rotated = subprocess.run(
            [LOGROTATE, "--force", "--state", str(tmp_path / "state"), str(policy)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert rotated.returncode == 0, rotated.stderr
        out, err = loadtest.communicate(timeout=BURST_SECONDS + 60)
    finally:
        if loadtest.poll() is None:
            loadtest.kill()
            loadtest.communicate()
    assert loadtest.returncode == 0, err
    summary = json.loads(out)
    assert summary["errors"] == {}
    assert summary["completed"] == summary["scheduled"] == RATE * BURST_SECONDS
    return int(summary["completed"])
