"""Key backends: where the AES keys live and where AES-GCM runs."""

from __future__ import annotations

from xks_proxy.backends.base import Backend
from xks_proxy.config import BackendConfig


def create_backend(config: BackendConfig) -> Backend:
    """The one place that maps a backend ``type`` to its implementation."""
    match config.type:
        case "software":
            from xks_proxy.backends.software import SoftwareBackend

            return SoftwareBackend(config)
    raise ValueError(f"unknown backend type {config.type!r}")
