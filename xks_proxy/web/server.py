"""Run one proxy process: the XKS listener (HTTP or HTTPS), an optional plain-HTTP ping
listener, the metrics listener and the admin API's listener (``web/admin_listener.py``), until
SIGTERM or SIGINT; SIGHUP reloads the configuration.

Metrics never share the XKS port: the XKS port faces KMS, the metrics port faces the operator's
Prometheus (loopback by default). In a worker of ``serve --workers N`` the supervisor serves the
metrics of all workers instead, and every worker binds the XKS and ping ports with SO_REUSEPORT.

Start-up and signals follow ``web/lifecycle.py`` (pid file lock, port probe, SIGTERM's shutdown
delay, SIGUSR1). Shutdown: stop accepting, let requests that have started finish
(``drain_seconds``), then close backends (see ``web/connection.py`` for why aiohttp's own
shutdown is not used for the drain).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from xks_proxy.config import Config, load_config
from xks_proxy.errors import ConfigError
from xks_proxy.metrics import ProxyMetrics
from xks_proxy.runtime import LiveRuntime, ProxyRuntime
from xks_proxy.web.admin_listener import AdminListener, start_admin_listener
from xks_proxy.web.app import (
    ENDPOINT_KEY,
    LIVE_RUNTIME_KEY,
    create_app,
    create_metrics_app,
    create_ping_app,
    xks_shortcut,
)
from xks_proxy.web.connection import ConnectionRegistry, XksSite
from xks_proxy.web.lifecycle import (
    SignalPlan,
    die_with_supervisor,
    ignore_reopen_until_ready,
    probe_ports,
)
from xks_proxy.web.pidfile import PidFile
from xks_proxy.web.protocol import LINGER_SECONDS
from xks_proxy.web.readiness import READINESS_KEY
from xks_proxy.web.tls import TlsState

log = logging.getLogger(__name__)
# Settings a reload cannot change in a running process: they shape its listeners.
RESTART_ONLY = ("host", "port", "workers", "ping_host", "ping_port", "pid_file")


@dataclass
class ServeOptions:
    host: str | None = None
    port: int | None = None
    # A worker of a supervisor: share ports, leave metrics and the pid file to the supervisor.
    worker: bool = False


class _TlsHolder:
    def __init__(self, config: Config, metrics: ProxyMetrics) -> None:
        self.state: TlsState | None = None
        self._metrics = metrics
        self.update(self.load(config))

    @staticmethod
    def load(config: Config) -> TlsState | None:
        return TlsState.load(config.tls) if config.tls is not None else None

    def update(self, state: TlsState | None) -> None:
        self.state = state
        if state is not None:
            state.warn_if_expiring()
            self._metrics.set_tls_expiry(state.not_after.timestamp())

    def current(self) -> TlsState | None:
        return self.state


async def _reload(live: LiveRuntime, tls: _TlsHolder) -> None:
    running = live.current.config
    metrics = live.current.metrics
    try:
        config = load_config(running.path)
        new_tls = tls.load(config)
        await live.reload(config, retire_after=running.server.drain_seconds)
    except ConfigError as error:
        metrics.count_reload("rejected")
        log.error("reload rejected, the running configuration stays in force: %s", error)
        return
    except Exception:
        metrics.count_reload("rejected")
        log.exception("reload failed, the running configuration stays in force")
        return
    tls.update(new_tls)
    metrics.count_reload("applied")
    for name in RESTART_ONLY:
        if getattr(config.server, name) != getattr(running.server, name):
            log.warning("server.%s changed: it takes effect at the next restart", name)
    # Those in a shared store (credentials_store = "database") are counted as the store has them.
    credentials = sum(len(store.credentials) for store in live.current.key_stores.values())
    log.info(
        "configuration reloaded: %d key store(s), %d credential(s)",
        len(config.key_stores),
        credentials,
    )


async def start_runner(
    app: web.Application, host: str, port: int, reuse_port: bool
) -> web.AppRunner:
    """Serve a small auxiliary app (ping, metrics) on its own plain-HTTP listener."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
    return runner


async def serve(config: Config, options: ServeOptions | None = None) -> None:
    """Serve until SIGINT or SIGTERM (see ``web/lifecycle.py`` for the whole life cycle)."""
    options = options or ServeOptions()
    ignore_reopen_until_ready()
    if options.worker:
        die_with_supervisor()
        await _serve(config, options)
        return
    pid_file = PidFile(config.pid_path)
    pid_file.acquire()
    try:
        probe_ports(listener_addresses(config, options))
        await _serve(config, options)
    finally:
        pid_file.release()


def listener_addresses(config: Config, options: ServeOptions) -> list[tuple[str, int]]:
    """Every (host, port) a proxy binds; the metrics port is the supervisor's in a worker."""
    server = config.server
    addresses = [
        (
            options.host if options.host is not None else server.host,
            options.port if options.port is not None else server.port,
        )
    ]
    if server.ping_port is not None:
        addresses.append((server.ping_host, server.ping_port))
    if config.metrics.enabled and not options.worker:
        addresses.append((config.metrics.host, config.metrics.port))
    if config.admin.enabled and not options.worker:
        addresses.append((config.admin.host, config.admin.port))
    return addresses


async def _serve(config: Config, options: ServeOptions) -> None:
    runtime = ProxyRuntime(config)
    tls = _TlsHolder(config, runtime.metrics)
    app = create_app(runtime)
    live = app[LIVE_RUNTIME_KEY]
    readiness = app[READINESS_KEY]
    registry = ConnectionRegistry(runtime.metrics.tls_handshake_failures.inc)
    reloads: set[asyncio.Task[None]] = set()

    def schedule_reload() -> None:
        task = asyncio.create_task(_reload(live, tls))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    def stopping() -> None:
        # /ping answers 503, and every answer from now on closes its connection, so clients
        # reconnect through the balancer to another proxy during the shutdown delay.
        readiness.stopping = True
        registry.draining = True

    signals = SignalPlan(
        schedule_reload,
        live.reopen_logs,
        lambda: live.current.config.server.shutdown_delay_seconds,
    )
    server = config.server
    handler_options: dict[str, Any] = {
        "access_log": None,
        "keepalive_timeout": server.idle_timeout_seconds,
        "lingering_time": LINGER_SECONDS,
        # XKS bodies are plain JSON (xks-spec §7.4): no Content-Encoding is decoded, so no
        # decompression work or decoder error is reachable from the network.
        "auto_decompress": False,
    }
    runner = web.AppRunner(app, shutdown_timeout=1.0, **handler_options)
    await runner.setup()
    # Everything built so far (modules, configuration, keys) lives as long as the process: out
    # of every garbage collection from now on, so a full collection under load scans only what
    # requests allocate.
    gc.freeze()
    extra_runners: list[web.AppRunner] = []
    admin: AdminListener | None = None
    signals.install()
    try:
        site = XksSite(
            runner,
            options.host if options.host is not None else server.host,
            options.port if options.port is not None else server.port,
            registry=registry,
            tls=tls.current,
            header_timeout=server.header_timeout_seconds,
            handler_options=handler_options,
            on_protocol_error=runtime.metrics.http_protocol_errors.inc,
            reuse_port=options.worker,
            shortcut=xks_shortcut(app),
        )
        await site.start()
        log.info("xks-proxy listening on %s (pid %d)", site.name, os.getpid())
        if server.ping_port is not None:
            ping = await start_runner(
                create_ping_app(readiness), server.ping_host, server.ping_port, options.worker
            )
            extra_runners.append(ping)
            log.info("load-balancer ping on http://%s:%d/ping", *ping.addresses[0][:2])
        if config.metrics.enabled and not options.worker:
            metrics_app = create_metrics_app(runtime.metrics.registry)
            metrics = await start_runner(
                metrics_app, config.metrics.host, config.metrics.port, False
            )
            extra_runners.append(metrics)
            log.info("metrics on http://%s:%d/metrics", *metrics.addresses[0][:2])
        if not options.worker:  # with workers, the supervisor serves the admin API
            admin = await start_admin_listener(config, runtime.metrics.registry)
        for store in config.key_stores:
            log.info("key store %s at %s (region %s)", store.name, store.uri_path, store.region)
        await signals.wait_for_stop(stopping)
        await asyncio.gather(*reloads, return_exceptions=True)
        await site.stop()
        # Logged once the listener is closed, so the line is true when it is read.
        log.info("stopped accepting connections; draining for up to %.1f s", server.drain_seconds)
        endpoint = app[ENDPOINT_KEY]
        drained = await registry.drain(
            live.current.config.server.drain_seconds, lambda: endpoint.in_flight > 0
        )
        log.info("drain %s", "complete" if drained else "timed out; closing the rest")
    finally:
        if admin is not None:
            await admin.stop()
        for each in extra_runners:
            await each.cleanup()
        await runner.cleanup()
        signals.uninstall()
