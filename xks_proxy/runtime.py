"""Everything a running proxy holds, built from one ``Config``: backends, key stores, service,
health monitor, metrics and audit log. Opening it logs in to backends and loads keys, which
happens before the port opens (aiohttp runs ``cleanup_ctx`` in ``AppRunner.setup``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from xks_proxy.audit import AuditLog
from xks_proxy.backends import create_backend
from xks_proxy.config import Config
from xks_proxy.health import HealthMonitor
from xks_proxy.metrics import ProxyMetrics
from xks_proxy.service import KeyStore, XksService

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class ProxyRuntime:
    def __init__(self, config: Config, *, clock: Clock = utc_now) -> None:
        self.config = config
        self.clock = clock
        self.metrics = ProxyMetrics()
        self.backends = {name: create_backend(b) for name, b in config.backends.items()}
        self.health = HealthMonitor(self.backends, config.health.interval_seconds, self.metrics)
        self.service = XksService(self.health, config.health, self.metrics)
        # Keyed by URI path, the way requests find their key store (xks-spec §2.1).
        self.key_stores = {
            ks.uri_path: KeyStore.build(ks, self.backends[ks.backend]) for ks in config.key_stores
        }
        self.audit = AuditLog(config.audit.path) if config.audit.enabled else None

    async def open(self) -> None:
        opened = []
        try:
            for backend in self.backends.values():
                await backend.open()
                opened.append(backend)
            await self.health.start()
        except BaseException:
            for backend in opened:
                await backend.close()
            raise

    async def close(self) -> None:
        await self.health.stop()
        for backend in self.backends.values():
            await backend.close()
        if self.audit is not None:
            self.audit.close()
