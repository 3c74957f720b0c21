"""deploy/systemd/xks-proxy.service: ``systemd-analyze verify`` clean, the signal and timeout
wiring the proxy's life cycle needs, and its ``MemoryDenyWriteExecute=yes`` proven harmless: a
real proxy (TLS through ``cryptography``, cffi and Rust) serves a signed request under the same
kernel restriction (``PR_SET_MDWE``: no writable-and-executable mapping, inherited across
``execve``)."""

from __future__ import annotations

import configparser
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import KEY_BOTH, make_deployment
from tests.proxy_process import XKS_PROXY, ProxyProcess, add_tls, close_all, connect, post
from tests.test_lifecycle import ENCRYPT

UNIT = Path(__file__).parent.parent / "deploy" / "systemd" / "xks-proxy.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SHIPPED_BINARY = "/opt/xks-proxy/bin/xks-proxy"
PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1
# The defaults of [server] shutdown_delay_seconds and drain_seconds (README, Operations).
SHUTDOWN_DELAY, DRAIN = 5, 10


def service_section() -> dict[str, list[str]]:
    """Every [Service] setting with all its values (systemd allows repeats)."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def verifiable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's xks-proxy (verify checks the binary
    exists); nothing else changes."""
    text = UNIT.read_text()
    assert SHIPPED_BINARY in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(SHIPPED_BINARY, XKS_PROXY))
    return copy


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None, "make test installs it (scripts/install-system-deps.sh)"
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(verifiable_copy(tmp_path))],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    # A broken unit is caught (the check can fail).
    broken = tmp_path / "broken.service"
    broken.write_text(verifiable_copy(tmp_path).read_text().replace("Type=simple", "Type=bogus"))
    failed = subprocess.run([SYSTEMD_ANALYZE, "verify", str(broken)],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert "Failed to parse service type" in failed.stderr


def test_systemd_analyze_security_rates_it_ok(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager",
         str(verifiable_copy(tmp_path))],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    summary = result.stdout.strip().splitlines()[-1]
    print(summary, file=sys.stderr)
    exposure = float(summary.split("exposure level for xks-proxy.service: ")[1].split()[0])
    assert exposure < 2.0, result.stdout  # systemd's "OK" band starts below 2.0


def test_the_unit_wires_signals_user_and_hardening() -> None:
    service = service_section()
    single = {key: values[-1] for key, values in service.items()}
    assert single["Type"] in {"simple", "notify"}
    assert single["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert single["KillSignal"] == "SIGTERM"
    assert int(single["TimeoutStopSec"]) > SHUTDOWN_DELAY + DRAIN
    assert single["User"] == single["Group"] == "xks-proxy"
    for setting, value in {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
        "CapabilityBoundingSet": "", "MemoryDenyWriteExecute": "yes",
    }.items():  # fmt: skip
        assert single[setting] == value, setting
    writable = single["ReadWritePaths"].split()
    # Key store and pid file (StateDirectory/RuntimeDirectory), audit log (LogsDirectory).
    for directory in ("StateDirectory", "LogsDirectory", "RuntimeDirectory"):
        assert any(path.endswith("/" + single[directory]) for path in writable), directory
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(UNIT.read_text())
    assert parser["Install"]["WantedBy"] == "multi-user.target"


# Runs the rest of its argv under what MemoryDenyWriteExecute=yes enforces (exec keeps the
# pid, and the kernel keeps the restriction across execve).
REFUSE_EXEC_GAIN = [
    sys.executable, "-c",
    "import ctypes, os, sys\n"
    f"if ctypes.CDLL(None).prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:\n"
    "    sys.exit('PR_SET_MDWE refused')\n"
    "os.execv(sys.argv[1], sys.argv[1:])",
]  # fmt: skip


def mdwe_supported() -> bool:
    probe = subprocess.run(
        [*REFUSE_EXEC_GAIN, sys.executable, "-c",
         f"import ctypes; print(ctypes.CDLL(None).prctl({PR_GET_MDWE}, 0, 0, 0, 0))"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return probe.stdout.strip() == str(PR_MDWE_REFUSE_EXEC_GAIN)


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_MDWE is Linux's")
def test_the_proxy_serves_tls_under_memory_deny_write_execute(tmp_path: Path) -> None:
    if not mdwe_supported():  # kernels before 6.3
        pytest.skip("this kernel has no PR_SET_MDWE")
    # The restriction is real: a writable and executable mapping is refused under it.
    denied = subprocess.run(
        [*REFUSE_EXEC_GAIN, sys.executable, "-c",
         "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ|mmap.PROT_WRITE|mmap.PROT_EXEC)"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert "PermissionError" in denied.stderr
    deployment = make_deployment(tmp_path)
    authority = add_tls(deployment.config_path)
    with ProxyProcess(deployment.config_path, launcher=REFUSE_EXEC_GAIN) as proxy:
        context = ssl.create_default_context()
        authority.configure_trust(context)
        try:
            store = deployment.config.key_stores[0]
            status, body = post(connect(proxy.port, context),
                                f"{store.uri_path}/keys/{KEY_BOTH}/encrypt", ENCRYPT,
                                store.credentials[0])  # fmt: skip
        finally:
            close_all()
        assert status == 200, body
        assert body["ciphertext"]
