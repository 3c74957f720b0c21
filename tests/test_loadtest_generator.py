"""The load generator's own side: its lean keep-alive client, requests signed once a second and
replayed, and the figures that tell a generator stall from a server stall."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import KEY_BOTH, make_deployment
from tests.proxy_process import ProxyProcess, add_tls
from xks_proxy.loadtest.runner import LoadSpec, PreparedRequests, run, run_process
from xks_proxy.loadtest.stats import LATE_SEND_MS, SATURATED_CPU_SHARE, Results
from xks_proxy.loadtest.workload import XksTarget, XksWorkload, parse_mix
from xks_proxy.sigv4 import Credential


def _target(url: str) -> XksTarget:
    return XksTarget(url, "/kms/xks/v1", "us-east-1", Credential("A" * 20, "s" * 44), "k")


async def _serve(handler: Any) -> TestServer:
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    server = TestServer(app)
    await server.start_server()
    return server


def test_the_generator_says_when_it_was_the_limit() -> None:
    idle = Results(latencies_ms=[1.0] * 100, send_lag_ms=[0.1] * 100)
    idle.add_cpu(0.2, 1.0)
    figures = idle.generator()
    assert figures["cpu_utilisation"] == 0.2 and figures["processes"] == 1
    assert figures["cpu_us_per_request"] == 2000.0
    assert figures["saturated"] is False and figures["saturated_by"] == []

    busy = Results(latencies_ms=[1.0] * 100, send_lag_ms=[0.1] * 100)
    busy.add_cpu(SATURATED_CPU_SHARE * 2, 2.0)
    assert busy.generator()["saturated_by"] == [f"CPU: {SATURATED_CPU_SHARE * 100:.0f} % of a core"]

    late = Results(latencies_ms=[1.0] * 100, send_lag_ms=[0.1] * 98 + [LATE_SEND_MS * 3] * 2)
    late.add_cpu(0.1, 1.0)
    (reason,) = late.generator()["saturated_by"]
    assert reason.startswith("sent late: p99 3.00 ms")


def test_generator_figures_travel_from_child_processes() -> None:
    one = Results(latencies_ms=[1.0], send_lag_ms=[0.5], loop_lag_ms=[0.2])
    one.add_cpu(0.3, 1.0)
    child = Results(latencies_ms=[1.0], send_lag_ms=[0.5], loop_lag_ms=[0.2])
    child.add_cpu(0.9, 1.0)  # a second process, busier
    one.merge(Results.from_wire(child.to_wire()))
    figures = one.generator()
    assert figures["processes"] == 2 and figures["cpu_utilisation"] == 0.9
    assert one.send_lag_ms == [0.5, 0.5] and one.loop_lag_ms == [0.2, 0.2]
    # A report from an older generator (no such fields) still reads.
    old = {"latencies_ms": [2.0], "errors": {}, "scheduled": 1, "elapsed_s": 1.0}
    assert Results.from_wire(old).generator()["processes"] == 0


def test_each_operation_is_signed_once_a_second_and_its_bytes_replayed() -> None:
    prepared = PreparedRequests(XksWorkload(_target("http://127.0.0.1:1"), 4096, 64))
    made = {id(prepared.get("encrypt")) for _ in range(500)}
    assert len(made) <= 2, "at most one new signature, at a second's boundary"
    request = prepared.get("health")
    head, _, body = request.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /kms/xks/v1/health HTTP/1.1\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"Authorization: AWS4-HMAC-SHA256 Credential=" in head


async def test_connections_are_kept_alive_and_reopened_when_the_server_closes() -> None:
    peers: list[Any] = []
    count = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal count
        count += 1
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        await request.read()
        # Every tenth answer closes its connection: the client must open another.
        headers = {"Connection": "close"} if count % 10 == 0 else {}
        return web.json_response({"ok": True}, headers=headers)

    server = await _serve(handler)
    try:
        spec = LoadSpec(target=_target(f"http://127.0.0.1:{server.port}"), mix=[("health", 1)],
                        rate=100, duration=0.6, connections=1)  # fmt: skip
        results = await run_process(spec)
    finally:
        await server.close()
    summary = results.summary()
    assert summary["completed"] == 60 and summary["errors"] == {}
    # One connection at a time, a new one after each close: 60 requests on 6 connections.
    assert len(set(peers)) == 6


async def test_connections_are_open_before_the_first_request_unless_told_not_to() -> None:
    open_at_first: list[int] = []
    server: TestServer | None = None

    async def handler(request: web.Request) -> web.Response:
        assert server is not None and server.runner is not None
        if not open_at_first:
            open_at_first.append(len(server.runner.server.connections))  # type: ignore[union-attr]
        await request.read()
        return web.json_response({"ok": True})

    for warm_up in (True, False):
        open_at_first.clear()
        server = await _serve(handler)
        try:
            spec = LoadSpec(target=_target(f"http://127.0.0.1:{server.port}"),
                            mix=[("health", 1)], rate=25, duration=0.2, connections=6,
                            warm_up=warm_up)  # fmt: skip
            summary = (await run_process(spec)).summary()
        finally:
            await server.close()
        assert summary["completed"] == 5 and summary["errors"] == {}
        # Warm: all six made before the schedule starts. Cold: made as requests need them, so
        # never more than the five requests (one, unless the server was slow to answer).
        assert open_at_first[0] == 6 if warm_up else 1 <= open_at_first[0] <= 5


async def test_a_warm_up_that_cannot_connect_leaves_the_errors_to_the_requests(
    reserve_port: Callable[[], int],
) -> None:
    spec = LoadSpec(target=_target(f"http://127.0.0.1:{reserve_port()}"), mix=[("health", 1)],
                    rate=20, duration=0.2, connections=3)  # fmt: skip
    summary = (await asyncio.wait_for(run_process(spec), 30)).summary()
    assert summary["completed"] == 4 and summary["errors"] == {"ClientConnectorError": 4}


async def test_a_dropped_connection_and_a_silent_server_are_counted_by_name() -> None:
    async def drop(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(1)
        return web.Response()

    async def silent(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    for handler, name in ((drop, "ServerDisconnectedError"), (silent, "TimeoutError")):
        server = await _serve(handler)
        try:
            spec = LoadSpec(target=_target(f"http://127.0.0.1:{server.port}"),
                            mix=[("health", 1)], rate=20, duration=0.2, timeout=0.3)  # fmt: skip
            summary = (await asyncio.wait_for(run_process(spec), 10)).summary()
        finally:
            await server.close()
        assert summary["errors"] == {name: 4}


async def test_the_report_carries_the_generator_figures() -> None:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    server = await _serve(handler)
    try:
        spec = LoadSpec(target=_target(f"http://127.0.0.1:{server.port}"), mix=[("health", 1)],
                        rate=50, duration=1)  # fmt: skip
        results = await run_process(spec)
    finally:
        await server.close()
    assert len(results.send_lag_ms) == len(results.latencies_ms) == 50
    assert results.loop_lag_ms, "the generator sampled its own loop lag"
    generator = results.summary()["generator"]
    assert generator["processes"] == 1 and 0 < generator["cpu_utilisation"] <= 1.5
    assert set(generator["send_lag_ms"]) == {"p50", "p90", "p99", "p99.9", "max"}


def test_the_text_report_says_what_to_do_about_a_saturated_generator() -> None:
    from xks_proxy.loadtest.command import _generator_line

    busy = Results(latencies_ms=[1.0] * 10, send_lag_ms=[0.1] * 10)
    busy.add_cpu(0.95, 1.0)
    assert "add --processes" in _generator_line(busy.generator())
    late = Results(latencies_ms=[1.0] * 10, send_lag_ms=[50.0] * 10)
    late.add_cpu(0.1, 1.0)
    text = _generator_line(late.generator())
    assert "SATURATED (sent late" in text and "other work on its core" in text
    fine = Results(latencies_ms=[1.0] * 10, send_lag_ms=[0.1] * 10)
    fine.add_cpu(0.1, 1.0)
    assert "SATURATED" not in _generator_line(fine.generator())


def test_over_tls_and_with_a_certificate_it_does_not_trust(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path)
    add_tls(deployment.config_path)
    store = deployment.config.key_stores[0]
    with ProxyProcess(deployment.config_path) as proxy:
        target = XksTarget(f"https://localhost:{proxy.port}", store.uri_path, store.region,
                           store.credentials[0], KEY_BOTH)  # fmt: skip
        spec = LoadSpec(target=target, mix=parse_mix("encrypt=1,decrypt=1"), rate=50,
                        duration=1, connections=4, cacert=str(tmp_path / "ca.pem"))  # fmt: skip
        summary = run(spec).summary()
        assert summary["completed"] == 50 and summary["errors"] == {}
        other = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other))
        refused = run(replace(spec, cacert=str(other), duration=0.2, mix=[("health", 1)]))
        refused_summary = refused.summary()
    assert refused_summary["errors"] == {"ClientConnectorError": 10}
