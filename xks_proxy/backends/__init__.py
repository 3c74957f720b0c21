"""Key backends: where the AES keys live and where AES-GCM runs."""

from __future__ import annotations

from xks_proxy.backends.base import Backend
from xks_proxy.backends.session_pool import SessionPoolObserver, SilentObserver
from xks_proxy.config import BackendConfig, Pkcs11BackendConfig, SoftwareBackendConfig


def create_backend(
    config: BackendConfig, pool_observer: SessionPoolObserver | None = None
) -> Backend:
    """The one place that maps a backend ``type`` to its implementation."""
    backend: Backend
    match config:
        case SoftwareBackendConfig():
            from xks_proxy.backends.software import SoftwareBackend

            backend = SoftwareBackend(config)
        case Pkcs11BackendConfig():
            from xks_proxy.backends.pkcs11 import Pkcs11Backend

            backend = Pkcs11Backend(config, pool_observer or SilentObserver())
    if config.fault_delay_ms:
        from xks_proxy.backends.faults import DelayedBackend

        backend = DelayedBackend(backend, config.fault_delay_ms / 1000)
    return backend
