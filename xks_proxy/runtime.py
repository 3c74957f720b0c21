"""Everything a running proxy holds, built from one ``Config``: backends, key stores, service,
health monitor and audit log. Opening it logs in to backends and loads keys, which happens
before the port opens (aiohttp runs ``cleanup_ctx`` in ``AppRunner.setup``).

``LiveRuntime`` holds the runtime in force and swaps it on a reload: the new configuration is
built and opened completely before it replaces the old one, so a bad configuration or a backend
that cannot open leaves the running one untouched. Backends whose configuration did not change
are carried over as they are (no re-login); replaced ones close after the drain period, when
requests that started on them are done. Metrics live across reloads.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from xks_proxy.audit import AuditLog
from xks_proxy.authz.load import load_authorizers
from xks_proxy.authz.stored import StoredPolicyFollower, backend_config
from xks_proxy.backends import create_backend
from xks_proxy.backends.base import Backend
from xks_proxy.backends.faults import DelayedBackend
from xks_proxy.backends.software import SoftwareBackend
from xks_proxy.config import Config, KeyStoreConfig
from xks_proxy.errors import ConfigError
from xks_proxy.health import HealthMonitor
from xks_proxy.keymgmt.audit import LifecycleAudit
from xks_proxy.live_credentials import LiveCredentials
from xks_proxy.metrics import ProxyMetrics
from xks_proxy.service import KeyStore, XksService
from xks_proxy.sigv4 import Credential

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class ProxyRuntime:
    def __init__(
        self,
        config: Config,
        *,
        clock: Clock = utc_now,
        metrics: ProxyMetrics | None = None,
        backends: Mapping[str, Backend] | None = None,
    ) -> None:
        config.check_serving()
        self.config = config
        self.clock = clock
        self.metrics = metrics or ProxyMetrics()
        given = backends or {}
        self.backends = {
            name: given.get(name) or create_backend(b, self.metrics.session_pool(name))
            for name, b in config.backends.items()
        }
        self._owned = {name for name in self.backends if name not in given}
        self.health = HealthMonitor(self.backends, config.health.interval_seconds, self.metrics)
        self.service = XksService(self.health, config.health, self.metrics)
        # Parsed here, so a bad policy file stops start-up and rejects a reload (authz/load.py).
        authorizers = load_authorizers(config, self.metrics.authz_observer)
        # Keyed by URI path, the way requests find their key store (xks-spec §2.1).
        self.key_stores = {
            ks.uri_path: KeyStore.build(
                ks, self.backends[ks.backend], authorizers[ks.name], self._credentials(ks)
            )
            for ks in config.key_stores
        }
        self._stored_policies = [
            StoredPolicyFollower(authorizer, self._software_backend(ks))
            for ks in config.key_stores
            if ks.authorization_policy_in_store and (authorizer := authorizers[ks.name])
        ]
        self.audit = (
            AuditLog(config.audit.path, self.metrics.audit_write_failures.inc)
            if config.audit.enabled
            else None
        )

    def _software_backend(self, store: KeyStoreConfig) -> SoftwareBackend:
        """The backend that keeps ``store``'s policy (``authorization_policy = "database"``)."""
        backend_config(self.config, store)  # ConfigError unless a software backend
        backend = _software(self.backends[store.backend])
        assert backend is not None
        return backend

    def _credentials(self, store: KeyStoreConfig) -> Mapping[str, Credential] | None:
        """Live credentials of a key store whose credentials are in a shared store, else None."""
        if store.credentials_backend is None:
            return None
        backend = _software(self.backends[store.credentials_backend])
        if backend is None:
            raise ConfigError(
                f"key store {store.name}: credentials_backend {store.credentials_backend} is not "
                "a software backend"
            )
        inline = {c.access_key_id: c for c in store.credentials}
        return LiveCredentials(inline, functools.partial(backend.stored_credentials, store.name))

    def _check_stored_credentials(self) -> None:
        """``Config.check_serving`` for credentials that are known once the backends are open."""
        for key_store in self.key_stores.values():
            if key_store.config.credentials_backend is not None and not key_store.credentials:
                raise ConfigError(
                    f"key store {key_store.config.name} has no credential, neither in the "
                    f"configuration nor in the key store of backend "
                    f"{key_store.config.credentials_backend}, so every request would be refused "
                    "(xks-proxy credentials add|create)"
                )

    async def open(self) -> None:
        """Open the backends this runtime created, read the policies kept in key store
        databases, then start health checks."""
        opened: list[Backend] = []
        try:
            for name in self._owned:
                await self.backends[name].open()
                opened.append(self.backends[name])
            for stored in self._stored_policies:
                await stored.start()
            self._check_stored_credentials()
            lifecycle_audit = LifecycleAudit(self.config.audit)
            for backend in self.backends.values():
                software = _software(backend)
                if software is not None:
                    software.audit_lifecycle_to(lifecycle_audit)
            await self.health.start()
        except BaseException:
            for stored in self._stored_policies:
                stored.stop()
            for backend in opened:
                await backend.close()
            if self.audit is not None:
                self.audit.close()
            raise

    async def close(self, keep: frozenset[str] = frozenset()) -> None:
        for stored in self._stored_policies:
            stored.stop()
        await self.health.stop()
        for name, backend in self.backends.items():
            if name not in keep:
                await backend.close()
        if self.audit is not None:
            self.audit.close()


def _software(backend: Backend) -> SoftwareBackend | None:
    """The software backend ``backend`` is (or wraps with an injected delay), else None."""
    if isinstance(backend, DelayedBackend):
        backend = backend.inner
    return backend if isinstance(backend, SoftwareBackend) else None


class LiveRuntime:
    """The runtime in force, replaced whole by ``reload``."""

    def __init__(self, runtime: ProxyRuntime) -> None:
        self.current = runtime
        self._retiring: set[asyncio.Task[None]] = set()

    async def reload(self, config: Config, retire_after: float) -> None:
        """Build, open and swap in a runtime for ``config``; raises and changes nothing on error."""
        old = self.current
        carried = {
            name: old.backends[name]
            for name, backend_config in config.backends.items()
            if old.config.backends.get(name) == backend_config
        }
        new = ProxyRuntime(config, clock=old.clock, metrics=old.metrics, backends=carried)
        await new.open()
        self.current = new
        task = asyncio.create_task(self._retire(old, frozenset(carried), retire_after))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def reopen_logs(self) -> None:
        """SIGUSR1: logrotate has moved the audit log away; write to a new file at once."""
        if self.current.audit is not None:
            try:
                self.current.audit.reopen()
            except OSError as error:
                # The old file stays in use: no line is lost, and the next signal tries again.
                log.error("cannot reopen the audit log: %s", error)

    @staticmethod
    async def _retire(old: ProxyRuntime, keep: frozenset[str], after: float) -> None:
        await old.health.stop()
        try:
            await asyncio.sleep(after)
        finally:
            await old.close(keep)

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await self.current.close()
