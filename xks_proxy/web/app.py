"""Application factories: the XKS app and the separate metrics app.

``create_app`` is used by ``serve`` and by the tests alike. The runtime opens (backends log in,
keys load, the first health check runs) in ``cleanup_ctx``, which ``AppRunner.setup`` runs
before any port is bound, so a broken backend fails start-up instead of the first request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.hdrs import EXPECT
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from xks_proxy.gc_pauses import GcPauseMonitor
from xks_proxy.loop_lag import LoopLagMonitor
from xks_proxy.runtime import LiveRuntime, ProxyRuntime
from xks_proxy.web.endpoint import XksEndpoint
from xks_proxy.web.protocol import AnswerHandler, Shortcut
from xks_proxy.web.readiness import READINESS_KEY, Readiness, ping
from xks_proxy.web.request import XksRequest

LIVE_RUNTIME_KEY = web.AppKey("live_runtime", LiveRuntime)
ENDPOINT_KEY = web.AppKey("xks_endpoint", XksEndpoint)
METRICS_REGISTRY_KEY = web.AppKey("metrics_registry", CollectorRegistry)


async def _runtime_lifetime(app: web.Application) -> AsyncIterator[None]:
    live = app[LIVE_RUNTIME_KEY]
    await live.current.open()
    # Metrics live across reloads, so one monitor serves every runtime.
    metrics = live.current.metrics
    pauses = GcPauseMonitor(metrics.gc_pause)

    def tick(loop_lag: float) -> None:
        metrics.tick(loop_lag)
        pauses.flush()

    lag = LoopLagMonitor(tick)
    lag.start()
    pauses.start()
    yield
    pauses.stop()
    lag.stop()
    await live.close()


def create_app(runtime: ProxyRuntime) -> web.Application:
    # No middleware: the XKS order of checks lives in the endpoint (see web/endpoint.py), and
    # handlers report to their connection themselves (draining, slow-loris cut-off).
    app = web.Application()
    live = LiveRuntime(runtime)
    app[LIVE_RUNTIME_KEY] = live
    app[READINESS_KEY] = Readiness(live)
    app.router.add_get("/ping", ping, allow_head=True)
    # Every other path goes to the XKS endpoint, which routes by configured URI path itself.
    endpoint = app[ENDPOINT_KEY] = XksEndpoint(live)
    runtime.metrics.count_in_flight(lambda: endpoint.in_flight)
    app.router.add_route("*", "/{path:.*}", endpoint.handle)
    app.cleanup_ctx.append(_runtime_lifetime)
    return app


def xks_shortcut(app: web.Application) -> Shortcut:
    """The requests the XKS listener hands straight to the endpoint, past the router.

    Exactly those the router would give it: a POST goes to the endpoint whatever its path (the
    /ping route takes only GET and HEAD, so the router sends POST /ping on to the endpoint's
    404). Only POSTs (the XKS API) are taken, and not one with ``Expect`` (the Application
    answers ``100 Continue`` first); anything else is routed as before.
    """
    answer = app[ENDPOINT_KEY].answer

    def shortcut(request: XksRequest) -> AnswerHandler | None:
        if request.method == "POST" and EXPECT not in request.headers:
            return answer
        return None

    return shortcut


def create_ping_app(readiness: Readiness) -> web.Application:
    """The plain-HTTP load-balancer probe listener: GET /ping and nothing else."""
    app = web.Application()
    app[READINESS_KEY] = readiness
    app.router.add_get("/ping", ping, allow_head=True)
    return app


async def metrics_handler(request: web.Request) -> web.Response:
    # Rendering the exposition is pure Python over every series (about 700 lines with a few key
    # stores): milliseconds on an idle core, 75 ms measured on a busy one, and on the loop that
    # is a stall every scrape. In a thread the loop takes the GIL back every switch interval
    # (5 ms) instead. The registry is thread-safe (prometheus-client's own server renders in a
    # thread), and the request histograms' collector copies each label set's counts at once.
    registry = request.app[METRICS_REGISTRY_KEY]
    body = await asyncio.to_thread(generate_latest, registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_metrics_app(registry: CollectorRegistry) -> web.Application:
    app = web.Application()
    app[METRICS_REGISTRY_KEY] = registry
    app.router.add_get("/metrics", metrics_handler)
    return app
