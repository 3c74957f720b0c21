"""The admin API's own listener (``[admin]``), never the XKS port.

It is served by the single process of ``serve`` or, with ``--workers N``, by the supervisor
(which also serves the metrics): one admin endpoint per host, whatever the worker count, and
its SIGHUP for ``/reload`` goes through the supervisor to every worker. Its connections go
through the XKS port's machinery (``XksSite``: header timeout, TLS and mutual TLS with the
subject-name check of ``web/tls.py``), with its own connection registry. Its TLS settings are
read at start; a change takes effect at the next restart, like the listener's address.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from xks_proxy.admin.api import create_admin_app
from xks_proxy.admin.metrics import AdminMetrics
from xks_proxy.admin.settings import build_guard
from xks_proxy.config import Config
from xks_proxy.web.connection import ConnectionRegistry, XksSite
from xks_proxy.web.tls import TlsState

log = logging.getLogger(__name__)
HEADER_TIMEOUT_SECONDS = 10.0
IDLE_TIMEOUT_SECONDS = 30.0


@dataclass
class AdminListener:
    runner: web.AppRunner
    site: XksSite

    async def stop(self) -> None:
        await self.site.stop()
        await self.runner.cleanup()


async def start_admin_listener(
    config: Config, registry: CollectorRegistry | None = None
) -> AdminListener | None:
    """Start the admin API if ``[admin] enabled``; ConfigError names an unusable setting.
    Its request counter goes into ``registry`` (the metrics the process serves), if given."""
    admin = config.admin
    if not admin.enabled or admin.auth is None:
        return None
    tls = TlsState.load(admin.tls) if admin.tls is not None else None
    metrics = AdminMetrics(registry) if registry is not None else None
    app = create_admin_app(config, build_guard(admin.auth), metrics)
    handler_options: dict[str, Any] = {
        "access_log": None,
        "keepalive_timeout": IDLE_TIMEOUT_SECONDS,
    }
    runner = web.AppRunner(app, shutdown_timeout=1.0, **handler_options)
    await runner.setup()
    site = XksSite(
        runner,
        admin.host,
        admin.port,
        registry=ConnectionRegistry(),
        tls=lambda: tls,
        header_timeout=HEADER_TIMEOUT_SECONDS,
        handler_options=handler_options,
    )
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("admin API on %s/admin/v1/", site.name)
    return AdminListener(runner, site)
