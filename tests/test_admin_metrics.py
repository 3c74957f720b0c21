"""Decision metrics: ``xks_admin_requests_total{operation, outcome}`` moves with each admin
request (in process, and in a live scrape of a single-process proxy and of a supervisor with
workers), and ``xks_authz_decisions_total{key_store, decision}`` with each Cedar decision of an
XKS request, cached ones included."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.authz_policies import ALICE_ENCRYPTS_ONLY
from tests.conftest import KEY_BOTH, Deployment
from tests.proxy_process import ProxyProcess, close_all
from tests.test_admin_api import STORE, AiohttpClient, admin_deployment, call, token
from tests.test_admin_process import mint
from tests.test_authz_http import deployment_with_policy
from tests.test_metrics_exposition import sample, scrape
from tests.xks_client import XksClient, decrypt_body, encrypt_body
from xks_proxy.admin.api import create_admin_app
from xks_proxy.admin.metrics import OUTCOMES, AdminMetrics
from xks_proxy.admin.roles import OPERATIONS
from xks_proxy.admin.settings import build_guard
from xks_proxy.runtime import ProxyRuntime
from xks_proxy.web.app import create_app

ADMIN_REQUESTS = "xks_admin_requests_total"


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    close_all()


def counted(registry: CollectorRegistry, operation: str, outcome: str) -> float:
    value = registry.get_sample_value(ADMIN_REQUESTS, {"operation": operation, "outcome": outcome})
    assert value is not None, (operation, outcome)
    return value


async def test_admin_requests_are_counted_by_operation_and_outcome(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    deployment = admin_deployment(tmp_path)
    assert deployment.config.admin.auth is not None
    registry = CollectorRegistry()
    app = create_admin_app(
        deployment.config, build_guard(deployment.config.admin.auth), AdminMetrics(registry)
    )
    client = await aiohttp_client(app)
    # Every series is there, at 0, before the first request.
    assert all(counted(registry, o, outcome) == 0 for o in OPERATIONS for outcome in OUTCOMES)
    made: dict[str, Any] = {"keyId": "key-counted"}
    assert (await call(client, "POST", STORE + "/keys", None, made))[0] == 401
    assert (await call(client, "POST", STORE + "/keys", "not.a.jwt", made))[0] == 401
    assert (await call(client, "POST", STORE + "/keys", token("viewer"), made))[0] == 403
    assert (await call(client, "POST", STORE + "/keys", token("key-admin"), made))[0] == 201
    assert (await call(client, "POST", STORE + "/keys", token("key-admin"), made))[0] == 409
    assert (await call(client, "GET", "/key-stores/nope", token("viewer")))[0] == 404
    assert {outcome: counted(registry, "keys.create", outcome) for outcome in OUTCOMES} == {
        "allowed": 1,
        "denied_401": 2,
        "denied_403": 1,
        "refused": 1,
        "error": 0,
    }
    assert counted(registry, "key-stores.describe", "refused") == 1
    exposed = "\n".join(
        f"{s.name}{s.labels}" for metric in registry.collect() for s in metric.samples
    )
    assert "key-counted" not in exposed and "alice" not in exposed


@pytest.mark.parametrize("workers", [None, 2], ids=["single-process", "supervisor"])
def test_a_live_scrape_has_the_admin_counter(tmp_path: Path, workers: int | None) -> None:
    deployment = admin_deployment(tmp_path)
    viewer = mint(deployment.config_path, "viewer", tmp_path / "viewer.jwt").read_text().strip()
    extra = ("--workers", str(workers)) if workers else ()
    with ProxyProcess(deployment.config_path, *extra) as proxy:
        proxy.wait_for("admin API on")
        line = next(line for line in proxy.lines if "admin API on" in line)
        match = re.search(r"(http://\S+)/admin/v1/", line)
        assert match is not None, line
        health = urllib.request.Request(
            match.group(1) + "/admin/v1/health", headers={"Authorization": f"Bearer {viewer}"}
        )
        with urllib.request.urlopen(health, timeout=10) as answer:
            assert answer.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(match.group(1) + "/admin/v1/key-stores", timeout=10)
        assert refused.value.code == 401
        refused.value.close()
        text = scrape(proxy)
        assert sample(text, ADMIN_REQUESTS + '{operation="health",outcome="allowed"}') == 1
        assert (
            sample(text, ADMIN_REQUESTS + '{operation="key-stores.list",outcome="denied_401"}') == 1
        )
        assert proxy.stop() == 0


async def test_cedar_decisions_are_counted(tmp_path: Path, aiohttp_client: AiohttpClient) -> None:
    deployment: Deployment = deployment_with_policy(tmp_path, ALICE_ENCRYPTS_ONLY)
    runtime = ProxyRuntime(deployment.config)
    store = deployment.config.key_stores[0]
    xks = XksClient(
        await aiohttp_client(create_app(runtime)), store.uri_path, store.region,
        store.credentials[0],
    )  # fmt: skip
    encrypted = await xks.call("encrypt", KEY_BOTH, encrypt_body(b"counted"))
    for _ in range(2):  # the second decision comes from the cache: counted all the same
        await xks.call("decrypt", KEY_BOTH, decrypt_body(encrypted), expect=403)
    registry = runtime.metrics.registry

    def decisions(decision: str) -> float | None:
        return registry.get_sample_value(
            "xks_authz_decisions_total", {"key_store": "dev", "decision": decision}
        )

    assert (decisions("allow"), decisions("deny")) == (1, 2)
    await runtime.close()
