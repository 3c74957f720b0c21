"""HSM keys in the key lifecycle service: ``keys list`` (with versions) and ``keys rotate``.

``KeyManager`` runs over a software key store (``KeyDatabase``) or over the token of a PKCS#11
backend (``TokenKeys``). HSM keys are created with ``xks-proxy pkcs11 create-key`` and switched
off with the ``disabled_keys`` kill switch of their key store; what the lifecycle service adds
for them is rotation (``pkcs11_admin.rotate_key``: a new object ``<key id>#<n>``). The other
lifecycle actions (deletion windows, imported material, backups) are the software store's.

A backend's tokens are replicas of one HSM cluster (``backends.pkcs11``): the management
commands work on its first token and the cluster replicates the new object, just as it does for
``pkcs11 create-key``. A token that fails mid-command is reported as such (exit 1, audit
"failed"), never as a missing key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, TypeVar

from pkcs11 import exceptions as p11

from xks_proxy import pkcs11_admin
from xks_proxy.backends.pkcs11_errors import TokenLostError
from xks_proxy.config import BackendConfig, Config, Pkcs11BackendConfig, SoftwareBackendConfig
from xks_proxy.errors import ConfigError
from xks_proxy.keystore.records import KeyStoreUnavailableError
from xks_proxy.keystore.store import KeyDatabase, open_key_database

T = TypeVar("T")
ORIGIN_HSM = "hsm"


class HsmKey(NamedTuple):
    """An HSM key as the lifecycle service lists it, in the fields of ``KeyRecord``."""

    key_id: str
    usage: frozenset[str]
    enabled: bool
    versions: tuple[int, ...]
    created_at: str | None = None  # PKCS#11 records no creation time
    deletion_date: str | None = None
    origin: str = ORIGIN_HSM
    valid_to: str | None = None
    material_fingerprint: str | None = None  # material never leaves the HSM


class TokenUnavailableError(KeyStoreUnavailableError):
    """The token failed while a management command used it (CLI exit 1, admin API 503)."""


class TokenKeys:
    """The keys on a PKCS#11 backend's token, for ``KeyManager``."""

    def __init__(self, config: Pkcs11BackendConfig, disabled: frozenset[str] = frozenset()) -> None:
        self._config = config
        self._disabled = disabled

    def _on_token(self, work: Callable[[], T]) -> T:
        try:
            return work()
        except (p11.PKCS11Error, TokenLostError) as error:
            # The return code's name only: no module text reaches logs or the audit line.
            raise TokenUnavailableError(
                f"backends.{self._config.name}: the token failed ({type(error).__name__}); "
                "nothing was changed unless `keys list` shows it"
            ) from None

    def records(self) -> list[HsmKey]:
        """Every customer key on the token, sorted by id; DISABLED when a key store's
        ``disabled_keys`` names it."""
        found = self._on_token(
            lambda: pkcs11_admin.key_versions(self._config, self._config.tokens[0])
        )
        return [
            HsmKey(key.key_id, key.usage, key.key_id not in self._disabled, key.versions)
            for key in found
        ]

    def rotate_key(self, key_id: str) -> int:
        return self._on_token(
            lambda: pkcs11_admin.rotate_key(self._config, self._config.tokens[0], key_id)
        )

    def close(self) -> None:
        """Nothing stays open between commands (each opens and closes its session)."""


def lifecycle_keys(config: Config, backend: BackendConfig) -> KeyDatabase | TokenKeys:
    """What ``KeyManager`` runs over for ``backend``: its key store, or its token (with the
    ``disabled_keys`` of the key stores it serves)."""
    if isinstance(backend, SoftwareBackendConfig):
        return open_key_database(backend)
    disabled = frozenset().union(
        *(store.disabled_keys for store in config.key_stores if store.backend == backend.name)
    )
    return TokenKeys(backend, disabled)


def open_lifecycle_keys(config: Config, name: str | None) -> KeyDatabase | TokenKeys:
    """The backend ``keys`` commands act on: the one named, else the only software backend,
    else the only PKCS#11 backend."""
    if name is not None:
        if name not in config.backends:
            raise ConfigError(f"--backend: no backend {name} in the configuration")
        return lifecycle_keys(config, config.backends[name])
    for kind in (SoftwareBackendConfig, Pkcs11BackendConfig):
        candidates = [b for b in config.backends.values() if isinstance(b, kind)]
        if len(candidates) > 1:
            raise ConfigError(f"name the {candidates[0].type} backend with --backend")
        if candidates:
            return lifecycle_keys(config, candidates[0])
    raise ConfigError("the configuration has no backend")
