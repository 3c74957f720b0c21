"""Run the proxy: the XKS listener and, when enabled, the metrics listener on its own port.

Metrics never share the XKS port: the XKS port faces KMS, the metrics port faces the operator's
Prometheus (loopback by default).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from xks_proxy.config import Config
from xks_proxy.runtime import ProxyRuntime
from xks_proxy.web.app import create_app, create_metrics_app

log = logging.getLogger(__name__)


def _listening(runner: web.AppRunner) -> str:
    return ", ".join(f"http://{host}:{port}" for host, port, *_ in runner.addresses)


async def serve(config: Config, host: str | None = None, port: int | None = None) -> None:
    """Serve until SIGINT or SIGTERM."""
    runtime = ProxyRuntime(config)
    for store in config.key_stores:
        if not store.credentials:
            log.warning("key store %s has no credentials: every request will fail", store.name)
    runner = web.AppRunner(create_app(runtime), access_log=None)
    await runner.setup()
    runners = [runner]
    try:
        bind_host = host if host is not None else config.server.host
        bind_port = port if port is not None else config.server.port
        await web.TCPSite(runner, bind_host, bind_port).start()
        log.info("xks-proxy listening on %s", _listening(runner))
        if config.metrics.enabled:
            metrics_runner = web.AppRunner(create_metrics_app(runtime.metrics), access_log=None)
            await metrics_runner.setup()
            runners.append(metrics_runner)
            await web.TCPSite(metrics_runner, config.metrics.host, config.metrics.port).start()
            log.info("metrics on %s/metrics", _listening(metrics_runner))
        for store in config.key_stores:
            log.info("key store %s at %s (region %s)", store.name, store.uri_path, store.region)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("shutting down")
    finally:
        for each in reversed(runners):
            await each.cleanup()
