"""A rolling restart of three proxies behind a real HAProxy (Debian's, TCP mode, health checks
on /ping) under ``xks-proxy loadtest`` at 200 req/s: each proxy in turn gets SIGTERM and is
started again, and not one request fails. It works because /ping answers 503 at once on SIGTERM
while the proxy serves on through ``server.shutdown_delay_seconds`` (each answer closing its
connection), so HAProxy has routed new connections elsewhere before the listener closes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import KEY_BOTH, make_deployment
from tests.proxy_process import XKS_PROXY, ProxyProcess, free_port

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
PROXIES = 3
RATE = 200
# Enough for three restarts of ~5 s each (delay, drain, start-up, HAProxy's rise).
DURATION = 24
SHUTDOWN_DELAY = 1.5
# HAProxy needs `rise` good checks `inter` apart before it sends traffic to a restarted proxy.
CHECK_INTERVAL_MS = 200
RISE = 2

HAPROXY_CONFIG = """\
global
    maxconn 2000
defaults
    mode tcp
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch
frontend xks
    bind 127.0.0.1:{front}
    default_backend proxies
backend proxies
    balance roundrobin
    option httpchk
    http-check send meth GET uri /ping
    default-server inter {inter}ms fall 1 rise {rise}
{servers}
"""


def _haproxy_config(front: int, ports: list[int]) -> str:
    servers = "\n".join(f"    server p{i} 127.0.0.1:{port} check" for i, port in enumerate(ports))
    return HAPROXY_CONFIG.format(front=front, inter=CHECK_INTERVAL_MS, rise=RISE, servers=servers)


def test_rolling_sigterm_restart_behind_haproxy_fails_no_request(tmp_path: Path) -> None:
    assert HAPROXY is not None, "make test installs it (scripts/install-system-deps.sh)"
    deployment = make_deployment(
        tmp_path,
        **{
            "max_body_bytes = 65536": "max_body_bytes = 65536\n"
            f"shutdown_delay_seconds = {SHUTDOWN_DELAY}\ndrain_seconds = 5"
        },
    )
    # Three proxies on one key store: one configuration each, for its own pid file and audit log.
    base = deployment.config_path.read_text()
    configs = []
    for i in range(PROXIES):
        config = tmp_path / f"proxy{i}.toml"
        text = base.replace("[server]", f'[server]\npid_file = "proxy{i}.pid"')
        config.write_text(text.replace('path = "audit.log"', f'path = "audit{i}.log"'))
        configs.append(config)
    kms_config = tmp_path / "kms-config.json"
    kms_config.write_text(
        subprocess.run(
            [XKS_PROXY, "kms-config", "--config", str(deployment.config_path)],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
    )  # fmt: skip
    proxies = [ProxyProcess(config) for config in configs]
    ports = [proxy.port for proxy in proxies]
    front = free_port()
    haproxy_cfg = tmp_path / "haproxy.cfg"
    haproxy_cfg.write_text(_haproxy_config(front, ports))
    balancer = subprocess.Popen(
        [HAPROXY, "-f", str(haproxy_cfg), "-db"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    loadtest = None
    try:
        time.sleep(RISE * CHECK_INTERVAL_MS / 1000 + 0.5)
        loadtest = subprocess.Popen(
            [XKS_PROXY, "loadtest", "--url", f"http://127.0.0.1:{front}",
             "--kms-config", str(kms_config), "--key-id", KEY_BOTH, "--rate", str(RATE),
             "--duration", str(DURATION), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )  # fmt: skip
        time.sleep(2)
        for i, config in enumerate(configs):
            assert proxies[i].stop(timeout=30) == 0
            assert "SIGTERM: /ping answers 503" in proxies[i].log
            proxies[i] = ProxyProcess(config, port=ports[i])
            # Let HAProxy see it up again before the next one goes down.
            time.sleep(RISE * CHECK_INTERVAL_MS / 1000 + 0.5)
        out, err = loadtest.communicate(timeout=DURATION + 60)
        assert loadtest.returncode == 0, err
        summary = json.loads(out)
        print(json.dumps(summary, indent=1), file=sys.stderr)
        assert summary["scheduled"] >= RATE * DURATION * 0.99
        assert summary["completed"] == summary["scheduled"]
        assert summary["errors"] == {}, summary["errors"]
    finally:
        if loadtest is not None and loadtest.poll() is None:
            loadtest.kill()
            loadtest.communicate()
        balancer.terminate()
        balancer.wait(timeout=10)
        for proxy in proxies:
            proxy.__exit__(None, None, None)
