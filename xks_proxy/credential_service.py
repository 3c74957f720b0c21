"""SigV4 credentials of key stores, one service for the CLI (``credentials_commands``) and the
admin API (``admin/api.py``): create, add, list (never secrets), revoke.

Each action reads the configuration afresh. A key store's ``credentials_store`` decides where
the action writes: ``"file"``, this host's 0600 credentials file (a reload applies it), or
``"database"``, the shared key store of its ``credentials_backend`` (``keystore.credentials``),
which every proxy of the fleet applies within a second. A refusal is ``CommandError`` with a
message fit for both an operator's terminal and an API client; the CLI turns it into exit 1, the
API into 409 or 404; a shared store that cannot be reached is ``KeyStoreUnavailableError`` (503).
Secrets never appear in a message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from xks_proxy.config import (
    Config,
    KeyStoreConfig,
    SoftwareBackendConfig,
    load_config,
)
from xks_proxy.config_table import validate_credential
from xks_proxy.credentials import CredentialEntry, CredentialsFile, generate_credential
from xks_proxy.errors import CommandError, ConfigError
from xks_proxy.keystore.credentials import CredentialTable, unseal_credential
from xks_proxy.keystore.store import open_key_database
from xks_proxy.sigv4 import Credential


@dataclass(frozen=True, slots=True)
class CredentialRow:
    key_store: str
    access_key_id: str
    origin: str  # "created <time>", "created <time> in <store>" or "inline in the configuration"


def credentials_file(config: Config) -> CredentialsFile:
    if config.credentials_file is None:
        raise ConfigError("credentials_file: not set, so credentials cannot be managed")
    return CredentialsFile(config.credentials_file)


def _store(config_path: Path, key_store: str | None) -> tuple[Config, KeyStoreConfig]:
    # Credential management needs no backend's secrets (PIN, KEK) unless the credentials live
    # in a backend's key store: then that backend's only.
    config = load_config(config_path, with_backends=False)
    store = config.key_store(key_store)
    if store.credentials_backend is not None:
        config = load_config(config_path, with_backends={store.credentials_backend})
    return config, store


def applied_at_once(config_path: Path, key_store: str | None) -> bool:
    """True when the key store's credentials are shared (every proxy applies a change within a
    second), False when a reload applies them."""
    config = load_config(config_path, with_backends=False)
    return config.key_store(key_store).credentials_backend is not None


@contextlib.contextmanager
def _table(config: Config, store: KeyStoreConfig) -> Iterator[CredentialTable]:
    assert store.credentials_backend is not None
    backend = config.backends[store.credentials_backend]
    assert isinstance(backend, SoftwareBackendConfig)  # parse_config checked it
    database = open_key_database(backend)
    try:
        yield CredentialTable(database)
    finally:
        database.close()


def _location(config: Config, store: KeyStoreConfig) -> str:
    backend = config.backends[store.credentials_backend or ""]
    return f"the key store of backend {backend.name}"


def create(config_path: Path, key_store: str | None) -> tuple[KeyStoreConfig, CredentialEntry]:
    """A fresh credential for the key store (several may be live at once)."""
    config, store = _store(config_path, key_store)
    if store.credentials_backend is None:
        return store, credentials_file(config).add(store.name, generate_credential())
    credential = generate_credential()
    with _table(config, store) as table:
        table.add(store.name, credential)
        (entry,) = [
            e for e in table.live(store.name) if e.access_key_id == credential.access_key_id
        ]
    return store, CredentialEntry(
        store.name, credential.access_key_id, credential.secret_access_key, entry.created_at
    )


def _check_inline_conflict(config: Config, store: KeyStoreConfig, credential: Credential) -> bool:
    """True when the key store has ``credential`` already (in the file or the configuration)."""
    for other in config.key_stores:
        for existing in other.credentials:
            if existing.access_key_id != credential.access_key_id:
                continue
            if other.name == store.name and existing == credential:
                return True
            # XKS spec §6.2: an access key id identifies exactly one secret.
            raise CommandError(
                f"access key id {credential.access_key_id} is already in use by key store "
                f"{other.name} with another secret"
            )
    return False


def add(
    config_path: Path, key_store: str | None, access_key_id: str, secret: str
) -> tuple[str, bool]:
    """Install a given credential: the key store's name, and False when it already had it."""
    config, store = _store(config_path, key_store)
    credential = validate_credential(access_key_id, secret, "credential")
    if _check_inline_conflict(config, store, credential):
        return store.name, False
    if store.credentials_backend is None:
        credentials_file(config).add(store.name, credential)
        return store.name, True
    with _table(config, store) as table:
        return store.name, table.add(store.name, credential)


def list_credentials(config_path: Path, key_store: str | None) -> list[CredentialRow]:
    config = load_config(config_path, with_backends=False)
    stores = [config.key_store(key_store)] if key_store else list(config.key_stores)
    managed = (
        {e.access_key_id: e for e in credentials_file(config).entries()}
        if config.credentials_file
        else {}
    )
    rows = []
    for store in stores:
        for credential in store.credentials:
            entry = managed.get(credential.access_key_id)
            origin = f"created {entry.created_at}" if entry else "inline in the configuration"
            rows.append(CredentialRow(store.name, credential.access_key_id, origin))
        if store.credentials_backend is not None:
            rows.extend(_stored_rows(config_path, store))
    return rows


def _stored_rows(config_path: Path, store: KeyStoreConfig) -> list[CredentialRow]:
    config, _ = _store(config_path, store.name)
    where = _location(config, store)
    with _table(config, store) as table:
        return [
            CredentialRow(store.name, e.access_key_id, f"created {e.created_at} in {where}")
            for e in table.live(store.name)
        ]


def revoke(config_path: Path, key_store: str | None, access_key_id: str, force: bool) -> str:
    """Remove a credential; returns the key store's name."""
    config, store = _store(config_path, key_store)
    inline = {c.access_key_id for c in store.credentials}
    if store.credentials_backend is not None and access_key_id not in inline:
        with _table(config, store) as table:
            table.revoke(store.name, access_key_id, others=len(inline), force=force)
        return store.name
    if access_key_id not in inline:
        raise CommandError(f"key store {store.name} has no credential {access_key_id}")
    if len(store.credentials) == 1 and not force:
        raise CommandError(
            f"{access_key_id} is the last credential of key store {store.name}: without "
            "it every request is refused (add the new one first, or force)"
        )
    if config.credentials_file is None or credentials_file(config).remove(access_key_id) is None:
        raise CommandError(f"{access_key_id} is written in the configuration file; remove it there")
    return store.name


def check_stored(config: Config) -> dict[str, int]:
    """``check-config`` for stored credentials: each unseals under the KEK, and every key store
    whose credentials live in a store has at least one (inline ones count). Returns the number
    each key store accepts. ``config`` must have its backends parsed."""
    counts = {store.name: len(store.credentials) for store in config.key_stores}
    for index, store in enumerate(config.key_stores):
        if store.credentials_backend is None:
            continue
        with _table(config, store) as table:
            stored = table.live(store.name)
            for entry in stored:
                unseal_credential(table.sealer, entry)
        counts[store.name] += len(stored)
        if not counts[store.name]:
            raise ConfigError(
                f"key_stores[{index}]: key store {store.name} has no credential, neither in the "
                f"configuration nor in {_location(config, store)}, so every request would be "
                "refused (xks-proxy credentials add|create)"
            )
    return counts
