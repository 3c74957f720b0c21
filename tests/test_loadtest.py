"""The load generator: its arithmetic, its schedule, coordinated omission, errors, SLO exit."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import KEY_BOTH, Deployment
from tests.proxy_process import XKS_PROXY, ProxyProcess
from xks_proxy.loadtest.runner import LoadSpec, run, run_process
from xks_proxy.loadtest.stats import Results, percentile
from xks_proxy.loadtest.workload import XksTarget, parse_mix, schedule
from xks_proxy.runtime import ProxyRuntime
from xks_proxy.sigv4 import Credential
from xks_proxy.web.app import create_app


def test_percentiles_on_known_inputs() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, p) for p in (50, 90, 99, 99.9, 100)] == [50, 90, 99, 100, 100]
    assert percentile([], 99) == 0.0
    assert percentile([7.0], 50) == percentile([7.0], 99.9) == 7.0
    thousand = [float(v) for v in range(1, 1001)]
    assert percentile(thousand, 99.9) == 999.0


def test_summary_counts_errors_and_the_250_ms_budget() -> None:
    results = Results(scheduled=5, elapsed_s=1.0)
    samples = [
        (1, None),
        (2, None),
        (300, "TimeoutError"),
        (4, "KeyNotFoundException"),
        (260, None),
    ]
    for latency, outcome in samples:
        results.record(float(latency), outcome)
    summary = results.summary()
    assert summary["errors"] == {"KeyNotFoundException": 1, "TimeoutError": 1}
    assert summary["error_rate"] == 0.4 and summary["over_250ms_share"] == 0.4
    assert summary["latency_ms"]["max"] == 300 and summary["achieved_rate"] == 5.0
    other = Results(scheduled=1, elapsed_s=2.0)
    other.record(5.0, "TimeoutError")
    results.merge(Results.from_wire(other.to_wire()))
    assert results.summary()["errors"]["TimeoutError"] == 2 and results.scheduled == 6


def test_mix_proportions_and_interleaving() -> None:
    cycle = schedule(parse_mix("encrypt=70,decrypt=20,metadata=5,health=5"))
    assert len(cycle) == 100
    assert {op: cycle.count(op) for op in set(cycle)} == {
        "encrypt": 70, "decrypt": 20, "metadata": 5, "health": 5,
    }  # fmt: skip
    assert "decrypt" in cycle[:10], "operations are spread, not in blocks"
    assert schedule(parse_mix("health")) == ["health"]
    for bad in ("sign=1", "encrypt=0", "encrypt=x"):
        with pytest.raises(ValueError):
            parse_mix(bad)


def _target(xks_url: str, deployment: Deployment, **changes: Any) -> XksTarget:
    store = deployment.config.key_stores[0]
    values: dict[str, Any] = {
        "url": xks_url, "uri_path": store.uri_path, "region": store.region,
        "credential": store.credentials[0], "key_id": KEY_BOTH,
    }  # fmt: skip
    values.update(changes)
    return XksTarget(**values)


@pytest.fixture
async def proxy_url(software_deployment: Deployment) -> Any:
    server = TestServer(create_app(ProxyRuntime(software_deployment.config)))
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}"
    await server.close()


async def test_rate_and_mix_against_the_proxy(
    proxy_url: str, software_deployment: Deployment
) -> None:
    spec = LoadSpec(
        target=_target(proxy_url, software_deployment),
        mix=parse_mix("encrypt=2,decrypt=1,metadata=1,health=1"),
        rate=200, duration=2, connections=8,
    )  # fmt: skip
    summary = (await run_process(spec)).summary()
    assert summary["scheduled"] == summary["completed"] == 400
    assert summary["errors"] == {}
    # The last request is due at 1.995 s: the run is paced, not a burst. The upper bound only
    # catches a hang (a busy machine, e.g. under `pytest -n`, took 11.8 s), not a speed test.
    assert 1.99 <= summary["elapsed_s"] < 60.0


async def test_errors_are_counted_by_name(
    proxy_url: str, software_deployment: Deployment, reserve_port: Callable[[], int]
) -> None:
    cases: dict[str, dict[str, Any]] = {
        "KeyNotFoundException": {"key_id": "key-missing"},
        "AuthenticationFailedException": {"credential": Credential("A" * 20, "s" * 44)},
        "ClientConnectorError": {"url": f"http://127.0.0.1:{reserve_port()}"},
    }
    for name, changes in cases.items():
        spec = LoadSpec(target=_target(proxy_url, software_deployment, **changes),
                        mix=[("metadata", 1)], rate=50, duration=0.4, timeout=5)  # fmt: skip
        assert (await run_process(spec)).summary()["errors"] == {name: 20}


async def test_a_stall_shows_in_every_request_scheduled_during_it() -> None:
    # One request stalls the only connection for 1 s. A closed-loop client would record one
    # slow request; measured from the schedule, the ~50 requests due meanwhile are slow too.
    count = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal count
        count += 1
        await request.read()
        if count == 20:
            await asyncio.sleep(1.0)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    server = TestServer(app)
    await server.start_server()
    try:
        target = XksTarget(f"http://127.0.0.1:{server.port}", "/kms/xks/v1", "us-east-1",
                           Credential("A" * 20, "s" * 44), "k")  # fmt: skip
        spec = LoadSpec(target=target, mix=[("health", 1)], rate=50, duration=3, connections=1)
        results = await run_process(spec)
    finally:
        await server.close()
    slow = [latency for latency in results.latencies_ms if latency > 500]
    assert len(slow) >= 20, f"only {len(slow)} requests carried the stall"
    assert max(results.latencies_ms) >= 900


def test_processes_share_the_schedule(software_deployment: Deployment) -> None:
    with ProxyProcess(software_deployment.config_path) as proxy:
        spec = LoadSpec(target=_target(f"http://127.0.0.1:{proxy.port}", software_deployment),
                        mix=[("health", 1)], rate=100, duration=1, processes=2)  # fmt: skip
        summary = run(spec).summary()
    assert summary["scheduled"] == summary["completed"] == 100 and summary["errors"] == {}
    assert summary["generator"]["processes"] == 2, "each child reports its own CPU"


def test_command_line_json_and_slo_exit_code(
    software_deployment: Deployment, tmp_path: Path
) -> None:
    config = software_deployment.config_path
    kms = tmp_path / "kms.json"
    kms.write_text(subprocess.run([XKS_PROXY, "kms-config", "--config", str(config)],
                                  capture_output=True, text=True, check=True).stdout)  # fmt: skip
    with ProxyProcess(config) as proxy:
        base = [
            XKS_PROXY,
            "loadtest",
            "--url",
            f"http://127.0.0.1:{proxy.port}",
            "--kms-config",
            str(kms),
            "--key-id",
            KEY_BOTH,
            "--rate",
            "50",
            "--duration",
            "1",
            "--json",
        ]

        def loadtest(*extra: str) -> tuple[int, dict[str, Any]]:
            result = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=60,
                                    check=False)  # fmt: skip
            return result.returncode, json.loads(result.stdout)

        code, report = loadtest("--slo-p99-ms", "5000", "--max-error-rate", "0")
        assert code == 0 and report["completed"] == 50 and report["slo_missed"] == []
        assert set(report["latency_ms"]) == {"p50", "p90", "p99", "p99.9", "max"}
        assert {"cpu_utilisation", "send_lag_ms", "loop_lag_ms", "saturated"} <= set(
            report["generator"]
        )
        code, report = loadtest("--slo-p99-ms", "0.001")
        assert code == 1 and report["slo_missed"][0].startswith("p99")
        code, report = loadtest("--mix", "metadata", "--key-id", "key-missing",
                                "--max-error-rate", "0.5")  # fmt: skip
        assert code == 1 and report["errors"] == {"KeyNotFoundException": 50}
    usage = subprocess.run([XKS_PROXY, "loadtest", "--url", "http://x"], capture_output=True,
                           text=True, check=False)  # fmt: skip
    assert usage.returncode == 2 and "--kms-config" in usage.stderr
    help_text = subprocess.run([XKS_PROXY, "loadtest", "--help"], capture_output=True,
                               text=True, check=True).stdout  # fmt: skip
    assert "signed once a second" in " ".join(help_text.split())
