"""Configuration: one TOML file read into frozen dataclasses and validated before any port opens.

Every error is a ``ConfigError`` whose message starts with the TOML path of the bad key
(``key_stores[0].region: ...``). Unknown keys are errors, so a typo never silently falls back to
a default.

Secrets (the key-encryption key, SigV4 secrets) may be written inline or by reference:
``env:NAME`` reads an environment variable, ``file:PATH`` reads a file (relative paths are
relative to the configuration file; one trailing newline is dropped). Secret values in the spec's
alphabets never contain ``:``, so the prefixes are unambiguous. A software backend's ``kek`` may
instead be a ``pkcs11:`` URI naming an AES key in an HSM (``kek_config``).

Commands that never touch a backend (``reload``, ``kms-config``, ``credentials …``) load the
file with ``with_backends=False``: backend tables are then only named, not parsed, so those
commands need none of the backends' secrets (an HSM PIN in ``env:``, the KEK) in the operator's
environment. Their ``Config.backends`` is empty.

SigV4 credentials come from two places, merged: ``[[key_stores.credentials]]`` tables in the TOML
(for configuration managed as code, secrets by reference) and the place the ``xks-proxy
credentials`` commands manage, which a key store's ``credentials_store`` chooses: ``"file"`` (the
default) is the JSON ``credentials_file`` of this host; ``"database"`` is the key store of a
software backend (``credentials_backend``, default the key store's own backend), which every
proxy of a fleet shares (``keystore/credentials.py``). Stored credentials are known only once
that backend is open, so ``ProxyRuntime.open`` checks that such a key store has one.

The sections are read by their own modules: ``config_table`` (the TOML table reader, secret
references), ``config_server`` (server, tls, metrics, audit, health, admin), ``config_backends``
and ``config_key_stores``; this module assembles them into ``Config``. The names other modules
import from here stay importable from here.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xks_proxy import validation
from xks_proxy.config_backends import (
    BackendConfig,
    Pkcs11BackendConfig,
    SoftwareBackendConfig,
    TokenSelector,
    parse_backend,
)
from xks_proxy.config_key_stores import (
    REGION_PATTERN,
    KeyStoreConfig,
    check_credential_backends,
    check_unique_key_stores,
    parse_key_store,
    read_credentials_file,
    require_key_id,
)
from xks_proxy.config_server import (
    AUDIT_ON_FAILURE,
    AdminConfig,
    AuditConfig,
    HealthConfig,
    MetricsConfig,
    ServerConfig,
    TlsConfig,
    parse_admin,
    parse_audit,
    parse_health,
    parse_metrics,
    parse_server,
    parse_tls,
)
from xks_proxy.config_table import Table, resolve_secret
from xks_proxy.errors import ConfigError

__all__ = [
    "AUDIT_ON_FAILURE",
    "NAME_PATTERN",
    "REGION_PATTERN",
    "AuditConfig",
    "BackendConfig",
    "Config",
    "HealthConfig",
    "KeyStoreConfig",
    "Pkcs11BackendConfig",
    "SoftwareBackendConfig",
    "TlsConfig",
    "TokenSelector",
    "load_config",
    "parse_config",
    "require_key_id",
    "resolve_secret",
]

NAME_PATTERN = validation.NAME_PATTERN  # key store and backend names; the CLI's --name too


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    server: ServerConfig
    metrics: MetricsConfig
    audit: AuditConfig
    health: HealthConfig
    backends: Mapping[str, BackendConfig]
    key_stores: tuple[KeyStoreConfig, ...]
    credentials_file: Path | None
    tls: TlsConfig | None = None
    admin: AdminConfig = AdminConfig()  # noqa: RUF009 (frozen, so one shared default is safe)

    @property
    def pid_path(self) -> Path:
        return self.path.parent / self.server.pid_file

    def check_serving(self) -> None:
        """What serving needs beyond a well-formed file; start-up and reload both call this."""
        for index, store in enumerate(self.key_stores):
            # Stored credentials are read when the backend opens (``ProxyRuntime.open``).
            if not store.credentials and store.credentials_backend is None:
                raise ConfigError(
                    f"key_stores[{index}]: key store {store.name} has no credential, so every "
                    "request would be refused (xks-proxy credentials add|create)"
                )

    def key_store(self, name_or_path: str | None) -> KeyStoreConfig:
        """Find a key store by name or URI path; ``None`` picks the only one."""
        if name_or_path is None:
            if len(self.key_stores) != 1:
                raise ConfigError("several key stores are configured: name one with --key-store")
            return self.key_stores[0]
        for store in self.key_stores:
            if name_or_path in (store.name, store.uri_path):
                return store
        raise ConfigError(f"no key store named {name_or_path!r}")


def parse_config(
    document: dict[str, Any],
    path: Path,
    environ: Mapping[str, str] | None = None,
    *,
    with_backends: bool | Collection[str] = True,
) -> Config:
    """Build a validated ``Config`` from a parsed TOML document (see the module docstring for
    ``with_backends``; a collection of names parses those backends only)."""
    env = os.environ if environ is None else environ
    base_dir = path.parent
    top = Table(document, "")
    credentials_name = top.get("credentials_file", str, "")
    credentials_file = base_dir / credentials_name if credentials_name else None
    backends_table = Table(top.get("backends", dict, {}), "backends")
    backend_names = list(backends_table.data)
    if not backend_names:
        raise ConfigError("backends: at least one backend is required")
    backends = {
        name: parse_backend(
            name, Table(backends_table.get(name, dict, {}), f"backends.{name}"), base_dir, env
        )
        for name in backend_names
        if with_backends is True or (with_backends is not False and name in with_backends)
    }
    extra = read_credentials_file(credentials_file) if credentials_file else {}
    raw_stores = top.get("key_stores", list, [])
    if not raw_stores:
        raise ConfigError("key_stores: at least one key store is required")
    stores = [
        parse_key_store(Table(item, f"key_stores[{index}]"), backend_names, extra, base_dir, env)
        for index, item in enumerate(raw_stores)
    ]
    check_unique_key_stores(stores)
    unknown_stores = sorted(set(extra) - {store.name for store in stores})
    if unknown_stores:
        raise ConfigError(f"credentials_file: names unknown key store {unknown_stores[0]!r}")
    check_credential_backends(stores, backends)
    tls_table = top.get("tls", dict, None)
    tls = (
        parse_tls(Table(tls_table, "tls"), base_dir, env, [s.region for s in stores])
        if tls_table is not None
        else None
    )
    config = Config(
        path=path,
        tls=tls,
        server=parse_server(Table(top.get("server", dict, {}), "server")),
        metrics=parse_metrics(Table(top.get("metrics", dict, {}), "metrics")),
        audit=parse_audit(Table(top.get("audit", dict, {}), "audit"), base_dir),
        health=parse_health(Table(top.get("health", dict, {}), "health")),
        backends=backends,
        key_stores=tuple(stores),
        credentials_file=credentials_file,
        admin=parse_admin(Table(top.get("admin", dict, {}), "admin"), base_dir, env),
    )
    top.done()
    return config


def load_config(
    path: Path,
    environ: Mapping[str, str] | None = None,
    *,
    with_backends: bool | Collection[str] = True,
) -> Config:
    """Read and validate a configuration file."""
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    return parse_config(document, path.resolve(), environ, with_backends=with_backends)
