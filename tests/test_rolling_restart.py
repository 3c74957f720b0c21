"""The fleet test: three proxies of one deployment behind a real HAProxy (Debian's) running the
shipped ``deploy/haproxy/haproxy.cfg`` unchanged (its addresses come from the environment),
under ``xks-proxy loadtest`` at 200 req/s.

1. For 30 s, with one proxy ``kill -9``ed mid-run and started again: the only failures are the
   requests that were in flight on it (a connection refused while HAProxy still has it up is
   retried elsewhere: ``retries`` + ``option redispatch``). The figures are printed.
2. A rolling SIGTERM restart of all three: not one request fails. It works because /ping (on
   each proxy's ``ping_port``) answers 503 at once on SIGTERM while the proxy serves on through
   ``server.shutdown_delay_seconds`` (each answer closing its connection), so HAProxy has routed
   new connections elsewhere before the listener closes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import KEY_BOTH, make_deployment
from tests.proxy_process import XKS_PROXY, ProxyProcess

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
HAPROXY_CONFIG = Path(__file__).parent.parent / "deploy" / "haproxy" / "haproxy.cfg"
PROXIES = 3
RATE = 200
CONNECTIONS = 32  # the load generator's keep-alive connections
KILL_DURATION = 30
# Enough for three restarts of ~10 s each (delay, drain, start-up, HAProxy's rise).
ROLLING_DURATION = 36
# HAProxy's check interval is also its check's time-out (no `timeout check` in the shipped
# file): 1 s, as its `timeout connect`, so that a proxy slow to answer /ping on a loaded machine
# (`pytest -n`, CI) is not taken for down. A stopping proxy is out of rotation after one failed
# check: within inter x fall (1) plus the check's own time-out, well below SHUTDOWN_DELAY (the
# proxies' default).
CHECK_INTERVAL_MS = 1000
SHUTDOWN_DELAY = 5
# A request answered late is not a failed one: the load generator's per-request time-out is
# far above its 10 s default so that a loaded machine's queueing is not counted as an error,
# while a request the fleet lost still fails (below HAProxy's 130 s `timeout server`).
REQUEST_TIMEOUT = 60


def haproxy_environment(front: int, ports: list[int], ping_ports: list[int]) -> dict[str, str]:
    """The variables the shipped haproxy.cfg reads, for proxies on loopback."""
    env = dict(os.environ, XKS_FRONTEND=f"127.0.0.1:{front}",
               XKS_CHECK_INTER=f"{CHECK_INTERVAL_MS}ms")  # fmt: skip
    for i, (port, ping_port) in enumerate(zip(ports, ping_ports, strict=True), start=1):
        env[f"XKS_PROXY_{i}"] = f"127.0.0.1:{port}"
        env[f"XKS_PING_PORT_{i}"] = str(ping_port)
    return env


def haproxy_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert HAPROXY is not None, "make test installs it (scripts/install-system-deps.sh)"
    return subprocess.run(
        [HAPROXY, "-c", "-f", str(HAPROXY_CONFIG)],
        capture_output=True, text=True, timeout=30, check=False, env=env,
    )  # fmt: skip


def test_the_shipped_haproxy_config_is_valid_and_needs_its_addresses(
    reserve_port: Callable[[], int],
) -> None:
    ports = [reserve_port() for _ in range(2 * PROXIES + 1)]
    env = haproxy_environment(ports[0], ports[1 : PROXIES + 1], ports[PROXIES + 1 :])
    checked = haproxy_check(env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Configuration file is valid" in checked.stdout
    print(checked.stdout, file=sys.stderr)
    # Without the environment HAProxy refuses the file rather than listening somewhere odd.
    bare = {k: v for k, v in os.environ.items() if not k.startswith("XKS_")}
    refused = haproxy_check(bare)
    assert refused.returncode != 0
    assert "Fatal errors found in configuration" in refused.stderr


def start_load(front: int, kms_config: Path, duration: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [XKS_PROXY, "loadtest", "--url", f"http://127.0.0.1:{front}",
         "--kms-config", str(kms_config), "--key-id", KEY_BOTH, "--rate", str(RATE),
         "--connections", str(CONNECTIONS), "--duration", str(duration),
         "--timeout", str(REQUEST_TIMEOUT), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip


def finish_load(loadtest: subprocess.Popen[str], duration: int, phase: str) -> dict[str, Any]:
    out, err = loadtest.communicate(timeout=duration + 2 * REQUEST_TIMEOUT)
    assert loadtest.returncode == 0, err
    summary: dict[str, Any] = json.loads(out)
    print(f"{phase}: {json.dumps(summary, indent=1)}", file=sys.stderr)
    assert summary["scheduled"] >= RATE * duration * 0.99
    return summary


def wait_for_front(front: int, balancer: subprocess.Popen[bytes], balancer_log: Path) -> None:
    """Until HAProxy accepts connections (its servers start up: the proxies already serve)."""
    deadline = time.monotonic() + 60
    while True:
        assert balancer.poll() is None, balancer_log.read_text()
        try:
            socket.create_connection(("127.0.0.1", front), timeout=5).close()
            return
        except OSError:
            assert time.monotonic() < deadline, balancer_log.read_text()
            time.sleep(0.1)


def server_ups(balancer_log: Path, index: int) -> int:
    """How often HAProxy has said the proxy ``index`` came up (after a failed check)."""
    return balancer_log.read_text().count(f"Server xks_proxies/xks{index + 1} is UP")


def wait_for_up(balancer_log: Path, index: int, ups_before: int) -> None:
    """Until HAProxy says a restarted proxy is up again (`rise` good checks): it takes no
    traffic before, whatever a loaded machine makes of the check interval."""
    deadline = time.monotonic() + 60
    while server_ups(balancer_log, index) <= ups_before:
        assert time.monotonic() < deadline, balancer_log.read_text()
        time.sleep(0.1)


def test_fleet_behind_the_shipped_haproxy_survives_kill_and_rolling_restart(
    tmp_path: Path, reserve_port: Callable[[], int]
) -> None:
    assert HAPROXY is not None, "make test installs it (scripts/install-system-deps.sh)"
    deployment = make_deployment(
        tmp_path,
        **{
            "max_body_bytes = 65536": "max_body_bytes = 65536\n"
            f"shutdown_delay_seconds = {SHUTDOWN_DELAY}\ndrain_seconds = 5"
        },
    )
    # Three proxies on one key store: one configuration each, for its own pid file, audit log
    # and ping port (on a real fleet each host has the same ping_port).
    base = deployment.config_path.read_text()
    configs, ping_ports = [], []
    for i in range(PROXIES):
        ping_ports.append(reserve_port())
        config = tmp_path / f"proxy{i}.toml"
        text = base.replace(
            "[server]",
            f'[server]\npid_file = "proxy{i}.pid"\nping_host = "127.0.0.1"\n'
            f"ping_port = {ping_ports[i]}",
        )
        config.write_text(text.replace('path = "audit.log"', f'path = "audit{i}.log"'))
        configs.append(config)
    kms_config = tmp_path / "kms-config.json"
    kms_config.write_text(
        subprocess.run(
            [XKS_PROXY, "kms-config", "--config", str(deployment.config_path)],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
    )  # fmt: skip
    # Every port is held for the whole test (tests/ports.py): a proxy is started again on the
    # port HAProxy knows, and nobody else may take it in between.
    ports = [reserve_port() for _ in configs]
    proxies = [ProxyProcess(config, port=port) for config, port in zip(configs, ports, strict=True)]
    front = reserve_port()
    balancer_log = tmp_path / "haproxy.log"
    with balancer_log.open("w") as log:
        balancer = subprocess.Popen(
            [HAPROXY, "-f", str(HAPROXY_CONFIG), "-db"],
            stdout=log, stderr=log, env=haproxy_environment(front, ports, ping_ports),
        )  # fmt: skip
    loadtest = None
    try:
        wait_for_front(front, balancer, balancer_log)
        # Phase 1: kill -9 one proxy mid-run, start it again.
        loadtest = start_load(front, kms_config, KILL_DURATION)
        time.sleep(KILL_DURATION / 3)
        ups_before = server_ups(balancer_log, 1)
        proxies[1].send_signal(signal.SIGKILL)
        assert proxies[1].stop(timeout=10) == -signal.SIGKILL
        time.sleep(2)
        proxies[1] = ProxyProcess(configs[1], port=ports[1])
        killed = finish_load(loadtest, KILL_DURATION, "kill -9")
        failed = sum(killed["errors"].values())
        # Only what was in flight on the killed proxy: each connection HAProxy had routed to
        # it loses at most its one request, and connections refused until HAProxy marks it
        # down are redispatched, so failures stay below the number of connections.
        assert failed <= CONNECTIONS, killed["errors"]
        assert killed["completed"] == killed["scheduled"]

        # Phase 2: rolling SIGTERM restart of all three.
        wait_for_up(balancer_log, 1, ups_before)
        loadtest = start_load(front, kms_config, ROLLING_DURATION)
        time.sleep(2)
        for i, config in enumerate(configs):
            ups_before = server_ups(balancer_log, i)
            assert proxies[i].stop(timeout=30) == 0
            assert "SIGTERM: /ping answers 503" in proxies[i].log
            proxies[i] = ProxyProcess(config, port=ports[i])
            # HAProxy sees it up again before the next one goes down.
            wait_for_up(balancer_log, i, ups_before)
        rolling = finish_load(loadtest, ROLLING_DURATION, "rolling SIGTERM restart")
        assert rolling["completed"] == rolling["scheduled"]
        assert rolling["errors"] == {}, rolling["errors"]
    finally:
        if loadtest is not None and loadtest.poll() is None:
            loadtest.kill()
            loadtest.communicate()
        balancer.terminate()
        balancer.wait(timeout=10)
        for proxy in proxies:
            proxy.__exit__(None, None, None)
