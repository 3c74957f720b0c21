"""Application factories: the XKS app and the separate metrics app.

``create_app`` is used by ``serve`` and by the tests alike. The runtime opens (backends log in,
keys load, the first health check runs) in ``cleanup_ctx``, which ``AppRunner.setup`` runs
before any port is bound, so a broken backend fails start-up instead of the first request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from xks_proxy.metrics import ProxyMetrics
from xks_proxy.runtime import ProxyRuntime
from xks_proxy.web.endpoint import XksEndpoint

RUNTIME_KEY = web.AppKey("runtime", ProxyRuntime)
METRICS_KEY = web.AppKey("metrics", ProxyMetrics)


async def ping(request: web.Request) -> web.Response:
    """Unauthenticated liveness for load balancers (xks-spec §2.2)."""
    return web.Response(text="pong\n")


async def _runtime_lifetime(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME_KEY]
    await runtime.open()
    yield
    await runtime.close()


def create_app(runtime: ProxyRuntime) -> web.Application:
    app = web.Application(client_max_size=runtime.config.server.max_body_bytes)
    app[RUNTIME_KEY] = runtime
    app.router.add_get("/ping", ping, allow_head=True)
    # Every other path goes to the XKS endpoint, which routes by configured URI path itself.
    app.router.add_route("*", "/{path:.*}", XksEndpoint(runtime).handle)
    app.cleanup_ctx.append(_runtime_lifetime)
    return app


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[METRICS_KEY]
    return web.Response(
        body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def create_metrics_app(metrics: ProxyMetrics) -> web.Application:
    app = web.Application()
    app[METRICS_KEY] = metrics
    app.router.add_get("/metrics", metrics_handler)
    return app
