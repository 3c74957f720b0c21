"""Key backends: where the AES keys live and where AES-GCM runs."""

from __future__ import annotations

from xks_proxy.backends.base import Backend
from xks_proxy.config import BackendConfig


def create_backend(config: BackendConfig) -> Backend:
    """The one place that maps a backend ``type`` to its implementation."""
    backend: Backend
    match config.type:
        case "software":
            from xks_proxy.backends.software import SoftwareBackend

            backend = SoftwareBackend(config)
        case _:
            raise ValueError(f"unknown backend type {config.type!r}")
    if config.fault_delay_ms:
        from xks_proxy.backends.faults import DelayedBackend

        backend = DelayedBackend(backend, config.fault_delay_ms / 1000)
    return backend
