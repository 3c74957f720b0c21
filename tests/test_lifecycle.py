"""The process life cycle against real ``xks-proxy serve`` processes: the pid file's lock, a
second start, a busy port, workers that die with their supervisor, the SIGTERM timeline
(/ping 503 → shutdown delay → listener closed → exit) and SIGINT skipping the delay."""

from __future__ import annotations

import base64
import http.client
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import KEY_BOTH, Deployment, make_deployment
from tests.proxy_process import XKS_PROXY, ProxyProcess, close_all, connect, post

ENCRYPT = {
    "requestMetadata": {"awsPrincipalArn": "arn:p", "kmsKeyArn": "arn:k",
                        "kmsOperation": "Encrypt", "kmsRequestId": "lifecycle"},
    "plaintext": "SGVsbG8=",
    "encryptionAlgorithm": "AES_GCM",
}  # fmt: skip


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    close_all()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [XKS_PROXY, *args], capture_output=True, text=True, timeout=60, check=False
    )


def ping(port: int) -> int:
    """The status of GET /ping, or 0 when nothing serves it: the connection is refused, or it
    was still waiting in the listen backlog when the listener closed (the kernel resets it)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/ping")
        return connection.getresponse().status
    except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected):
        return 0
    finally:
        connection.close()


def eventually(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) no longer serves.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def worker_pids(proxy: ProxyProcess) -> list[int]:
    return [int(m) for m in re.findall(r"worker \d+ started \(pid (\d+)\)", proxy.log)]


@pytest.fixture
def lifecycle_deployment(tmp_path: Path) -> Deployment:
    return make_deployment(
        tmp_path,
        **{"max_body_bytes = 65536": "max_body_bytes = 65536\nshutdown_delay_seconds = 2"},
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_second_start_exits_2_and_touches_nothing(
    lifecycle_deployment: Deployment, workers: str
) -> None:
    config = lifecycle_deployment.config
    with ProxyProcess(config.path, "--workers", workers) as first:
        first.wait_for("key store", count=int(workers))
        pid_text = config.pid_path.read_text()
        assert pid_text == f"{first.process.pid}\n"
        second = run_cli("serve", "--config", str(config.path), "--port", str(first.port),
                         "--workers", workers)  # fmt: skip
        assert second.returncode == 2
        assert second.stderr == f"xks-proxy: already running as pid {first.process.pid}\n"
        # The first proxy keeps its pid file, its port and its reload.
        assert config.pid_path.read_text() == pid_text
        assert ping(first.port) == 200
        reload = run_cli("reload", "--config", str(config.path))
        assert reload.returncode == 0, reload.stderr
        first.wait_for("configuration reloaded", count=int(workers))
        assert first.stop() == 0
    assert not config.pid_path.exists()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_busy_port_exits_2_with_one_line(lifecycle_deployment: Deployment, workers: str) -> None:
    config = lifecycle_deployment.config
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = run_cli("serve", "--config", str(config.path), "--port", str(port),
                         "--workers", workers)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == f"xks-proxy: port {port} is in use\n"
    # Refused before anything started; the pid file it held is gone with it.
    assert not config.pid_path.exists()


def test_a_stale_pid_file_is_taken_over_and_never_signalled(
    lifecycle_deployment: Deployment,
) -> None:
    config = lifecycle_deployment.config
    # A pid file left by a killed proxy names a pid that now belongs to another process.
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        config.pid_path.write_text(f"{bystander.pid}\n")
        for command in ("reload", "reopen-logs"):
            result = run_cli(command, "--config", str(config.path))
            assert result.returncode == 1
            assert "stale" in result.stderr
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
    with ProxyProcess(config.path) as proxy:
        assert config.pid_path.read_text() == f"{proxy.process.pid}\n"
        assert proxy.stop() == 0


def test_workers_never_outlive_a_killed_supervisor(lifecycle_deployment: Deployment) -> None:
    config = lifecycle_deployment.config
    with ProxyProcess(config.path, "--workers", "2") as proxy:
        proxy.wait_for("key store", count=2)
        workers = worker_pids(proxy)
        assert len(workers) == 2 and all(alive(pid) for pid in workers)
        proxy.process.kill()
        proxy.process.wait(timeout=10)
        time.sleep(3)
        assert ping(proxy.port) == 0
        # The listener is closed; the workers finish their drain and exit.
        assert eventually(lambda: not any(alive(pid) for pid in workers), 15), proxy.log
    # The pid file of the killed supervisor holds no lock: the next start takes it over.
    with ProxyProcess(config.path) as again:
        assert again.stop() == 0


def test_sigterm_turns_ping_to_503_and_serves_through_the_delay(tmp_path: Path) -> None:
    deployment = make_deployment(
        tmp_path,
        **{
            "max_body_bytes = 65536": "max_body_bytes = 65536\nshutdown_delay_seconds = 2\n"
            'ping_host = "127.0.0.1"\nping_port = 0'
        },
    )
    credential = deployment.config.key_stores[0].credentials[0]
    uri = deployment.config.key_stores[0].uri_path
    with ProxyProcess(deployment.config_path, ready="load-balancer ping") as proxy:
        proxy.wait_for("key store")
        ping_port = proxy.ping_port
        assert ping(proxy.port) == ping(ping_port) == 200
        connection = connect(proxy.port)
        assert post(connection, f"{uri}/keys/{KEY_BOTH}/encrypt", ENCRYPT, credential)[0] == 200
        signalled = time.monotonic()
        proxy.send_signal(signal.SIGTERM)
        assert eventually(lambda: ping(proxy.port) == 503 and ping(ping_port) == 503, 1)
        # Still serving, on a new connection too, and each answer closes its connection.
        during = connect(proxy.port)
        assert post(during, f"{uri}/keys/{KEY_BOTH}/encrypt", ENCRYPT, credential)[0] == 200
        assert during.sock is None  # http.client closed it: the answer said Connection: close
        assert time.monotonic() - signalled < 2
        assert eventually(lambda: ping(proxy.port) == 0, 5)
        assert time.monotonic() - signalled >= 2
        assert proxy.stop() == 0
    assert "SIGTERM: /ping answers 503" in proxy.log


def test_sigint_skips_the_shutdown_delay(tmp_path: Path) -> None:
    deployment = make_deployment(
        tmp_path,
        **{"max_body_bytes = 65536": "max_body_bytes = 65536\nshutdown_delay_seconds = 60"},
    )
    with ProxyProcess(deployment.config_path) as proxy:
        proxy.send_signal(signal.SIGTERM)
        assert eventually(lambda: ping(proxy.port) == 503, 2)
        # Ctrl-C during the 60 s delay: the listener closes and the process exits now.
        proxy.send_signal(signal.SIGINT)
        assert proxy.process.wait(timeout=10) == 0
    assert "shutdown delay cut short" in proxy.log


def test_workers_that_cannot_start_stop_the_supervisor_with_exit_2(
    lifecycle_deployment: Deployment,
) -> None:
    config = lifecycle_deployment.config
    # A well-formed but wrong key-encryption key: the configuration loads, the workers' key
    # store does not open. Restarting them forever would help nobody.
    (lifecycle_deployment.directory / "kek.key").write_text(base64.b64encode(b"k" * 32).decode())
    result = subprocess.run(
        [XKS_PROXY, "serve", "--config", str(config.path), "--workers", "2"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "but the configured key-encryption key is" in result.stderr
    assert "(wrong kek)" in result.stderr
    assert result.stderr.endswith("xks-proxy: a worker could not start (see the line above)\n")
    assert "restarting" not in result.stderr
    assert not config.pid_path.exists()


def test_sigusr1_while_workers_start_kills_none(lifecycle_deployment: Deployment) -> None:
    config = lifecycle_deployment.config
    with ProxyProcess(config.path, "--workers", "2", ready="metrics of all workers") as proxy:
        # logrotate's reopen arriving while the workers are still starting up.
        deadline = time.monotonic() + 30
        while sum("key store" in line for line in proxy.lines) < 2:
            assert proxy.process.poll() is None, proxy.log
            assert time.monotonic() < deadline, proxy.log
            proxy.send_signal(signal.SIGUSR1)
            time.sleep(0.01)
        assert "exited" not in proxy.log
        assert len(worker_pids(proxy)) == 2
        assert proxy.stop() == 0
