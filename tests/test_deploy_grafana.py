"""deploy/grafana/xks-proxy.json, tested for real: a SoftHSM-backed proxy with TLS (so the HSM
pool, EKM health and certificate panels have series) runs under a short ``xks-proxy loadtest``
(plus a few requests for a key that does not exist, for the errors panel) while Debian's
Prometheus scrapes it every second on loopback; then every panel's PromQL is evaluated through
Prometheus's HTTP API and must return data."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import KEY_BOTH, make_pkcs11_deployment
from tests.ports import PortReservation
from tests.proxy_process import XKS_PROXY, ProxyProcess, add_tls
from tests.softhsm import SoftHsm

DASHBOARD = Path(__file__).parent.parent / "deploy" / "grafana" / "xks-proxy.json"
PROMETHEUS = shutil.which("prometheus")
JOB = "xks-proxy"  # the job name deploy/prometheus/alerts.yml and the ServiceMonitor use
# What Grafana substitutes: $__rate_interval is at least four scrape intervals.
RATE_INTERVAL = "20s"


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"])
            for panel in dashboard["panels"] for target in panel["targets"]]  # fmt: skip


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = [panel["title"] for panel in dashboard["panels"]]
    assert len(titles) == len(set(titles)) >= 9
    assert [panel["id"] for panel in dashboard["panels"]] == list(range(1, len(titles) + 1))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert 'job=~"$job"' in target["expr"], target["expr"]
    assert variables == {"datasource", "job"}
    latency = next(p for p in dashboard["panels"] if p["title"].startswith("Latency"))
    steps = latency["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == 0.25  # KMS's 250 ms timeout


class Prometheus:
    """Debian's prometheus on loopback with its own configuration and storage in a temp dir."""

    def __init__(self, directory: Path, target: str) -> None:
        assert PROMETHEUS is not None, "make test installs it (scripts/install-system-deps.sh)"
        config = directory / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        # Prometheus takes no port 0 it would report: a port held for it (tests/ports.py).
        self._reservation = PortReservation()
        self.port = self._reservation.port
        self.log = directory / "prometheus.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}",
                 f"--storage.tsdb.path={directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}",
                 "--storage.tsdb.retention.time=1h", "--log.level=warn"],
                stdout=log, stderr=log,
            )  # fmt: skip

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": promql}
        )
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.loads(response.read())
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def wait_for(self, promql: str, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = self.query(promql)
            except OSError:
                result = []
            if result:
                return result
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"no data for {promql}\n{self.log.read_text()}"
            time.sleep(0.5)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reservation.close()


@pytest.fixture
def prometheus_and_proxy(tmp_path: Path, softhsm: SoftHsm) -> Iterator[tuple[Prometheus, int]]:
    deployment = make_pkcs11_deployment(tmp_path, softhsm)
    add_tls(deployment.config_path)
    with ProxyProcess(deployment.config_path) as proxy:
        target = proxy.metrics_url.removeprefix("http://").removesuffix("/metrics")
        prometheus = Prometheus(tmp_path, target)
        try:
            yield prometheus, proxy.port
        finally:
            prometheus.stop()


def loadtest(tmp_path: Path, port: int, *args: str) -> dict[str, Any]:
    kms_config = tmp_path / "kms-config.json"
    if not kms_config.exists():
        kms_config.write_text(subprocess.run(
            [XKS_PROXY, "kms-config", "--config", str(tmp_path / "xks-proxy.toml")],
            capture_output=True, text=True, timeout=60, check=True).stdout)  # fmt: skip
    done = subprocess.run(
        [XKS_PROXY, "loadtest", "--url", f"https://localhost:{port}",
         "--cacert", str(tmp_path / "ca.pem"), "--kms-config", str(kms_config), "--json", *args],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def test_every_panel_returns_data_from_a_real_prometheus(
    tmp_path: Path, prometheus_and_proxy: tuple[Prometheus, int]
) -> None:
    prometheus, port = prometheus_and_proxy
    prometheus.wait_for(f'up{{job="{JOB}"}} == 1')
    ok = loadtest(tmp_path, port, "--key-id", KEY_BOTH, "--mix", "encrypt=60,decrypt=30,health=10",
                  "--rate", "50", "--duration", "6")  # fmt: skip
    assert ok["errors"] == {}, ok
    missing = loadtest(tmp_path, port, "--key-id", "key-does-not-exist", "--rate", "20",
                       "--duration", "1")  # fmt: skip
    assert missing["errors"], missing
    # Two more scrapes after the load, so every rate() has its points.
    prometheus.wait_for('sum(xks_errors_total{job="xks-proxy"}) > 0')
    time.sleep(2)
    empty = []
    for title, expr in panel_queries():
        promql = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$job", ".+")
        result = prometheus.query(promql)
        if not result:
            empty.append((title, promql))
    assert empty == []
