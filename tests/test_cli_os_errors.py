"""Every CLI command meets operating-system failures with one line and exit 1, never a traceback.

The failures are real: a small tmpfs the test mounts, filled to the last byte (ENOSPC, and
SQLite's "database or disk is full"), then remounted read-only (EROFS). Mounting needs root,
which CI has.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proxy_process import XKS_PROXY

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI is)")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [XKS_PROXY, *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "volume"
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount_point)], check=True
    )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(volume: Path) -> None:
    """Write until the file system refuses, so the next write of any size fails with ENOSPC."""
    with (volume / "filler").open("wb", buffering=0) as filler:
        with contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 4096)
        with contextlib.suppress(OSError):
            while True:
                filler.write(b"\0")
    probe = volume / "probe"
    with pytest.raises(OSError) as refused:
        probe.write_bytes(b"x" * 4096)
    assert refused.value.errno == errno.ENOSPC
    probe.unlink(missing_ok=True)


def deployment_on(volume: Path) -> Path:
    made = run(
        "init",
        str(volume / "dep"),
        "--key-id",
        "first-key",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--admin-port",
        "0",
    )
    assert made.returncode == 0, made.stderr
    return volume / "dep" / "xks-proxy.toml"


def commands_that_write(config: Path, volume: Path) -> dict[str, list[str]]:
    cfg = ["--config", str(config)]
    return {
        "keys create": ["keys", "create", *cfg, "--key-id", "second-key"],
        "keys rotate": ["keys", "rotate", *cfg, "--key-id", "first-key"],
        "keys disable": ["keys", "disable", *cfg, "--key-id", "first-key"],
        "credentials create": ["credentials", "create", *cfg],
        "init": ["init", str(volume / "another")],
    }


def assert_one_clean_line(result: subprocess.CompletedProcess[str], command: str) -> None:
    assert result.returncode == 1, (command, result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("xks-proxy: "), lines[0]


@pytest.mark.parametrize(
    "command", ["keys create", "keys rotate", "keys disable", "credentials create", "init"]
)
def test_full_disk_is_one_line_and_exit_1(small_volume: Path, command: str) -> None:
    config = deployment_on(small_volume)
    fill(small_volume)
    result = run(*commands_that_write(config, small_volume)[command])
    assert_one_clean_line(result, command)
    assert str(small_volume) in result.stderr, result.stderr


@pytest.mark.parametrize("command", ["keys create", "keys rotate", "credentials create", "init"])
def test_read_only_volume_is_one_line_and_exit_1(small_volume: Path, command: str) -> None:
    config = deployment_on(small_volume)
    subprocess.run(["mount", "-o", "remount,ro", str(small_volume)], check=True)
    result = run(*commands_that_write(config, small_volume)[command])
    assert_one_clean_line(result, command)
    # SQLite says "unable to open database file" here, the OS "Read-only file system": either
    # way the line names the file that could not be written.
    assert str(small_volume) in result.stderr, result.stderr
