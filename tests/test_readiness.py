"""/ping as a readiness probe: 503 while every EKM of every backend is UNAVAILABLE (unless
``health.ping_fails_when_ekms_unavailable = false``), 200 again when one comes back. The real
software backend runs underneath; only its health answer is switched, as when the HSM is lost."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import make_deployment
from xks_proxy.backends import create_backend
from xks_proxy.backends.base import Backend, EkmHealth, HealthState
from xks_proxy.backends.faults import DelayedBackend
from xks_proxy.runtime import ProxyRuntime
from xks_proxy.web.app import create_app


class SwitchableHealth(DelayedBackend):
    """The real backend, whose deep health check can be made to report UNAVAILABLE."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner, 0)
        self.lost = False

    async def check_health(self) -> list[EkmHealth]:
        if self.lost:
            return [EkmHealth(self.name, "lost", HealthState.UNAVAILABLE)]
        return await super().check_health()


async def _client(
    tmp_path: Path, aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]], setting: str
) -> tuple[ProxyRuntime, SwitchableHealth, TestClient[Any, Any]]:
    deployment = make_deployment(
        tmp_path, **{"interval_seconds = 15": f"interval_seconds = 15\n{setting}"}
    )
    backend = SwitchableHealth(create_backend(deployment.config.backends["local"]))
    await backend.open()
    runtime = ProxyRuntime(deployment.config, backends={"local": backend})
    return runtime, backend, await aiohttp_client(create_app(runtime))


async def test_ping_is_503_while_every_ekm_is_unavailable(
    tmp_path: Path, aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]]
) -> None:
    runtime, backend, client = await _client(tmp_path, aiohttp_client, "")
    try:
        assert (await client.get("/ping")).status == 200
        backend.lost = True
        await runtime.health.check_all()
        response = await client.get("/ping")
        assert response.status == 503
        assert await response.text() == "ekm unavailable\n"
        backend.lost = False
        await runtime.health.check_all()
        assert (await client.get("/ping")).status == 200
    finally:
        await backend.close()


async def test_ping_ignores_the_ekms_when_switched_off(
    tmp_path: Path, aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]]
) -> None:
    setting = "ping_fails_when_ekms_unavailable = false"
    runtime, backend, client = await _client(tmp_path, aiohttp_client, setting)
    try:
        backend.lost = True
        await runtime.health.check_all()
        assert runtime.health.status("local")[0].state is HealthState.UNAVAILABLE
        assert (await client.get("/ping")).status == 200
    finally:
        await backend.close()
