"""SigV4 credentials of key stores, one service for the CLI (``credentials_commands``) and the
admin API (``admin/api.py``): create, add, list (never secrets), revoke.

Each action reads the configuration afresh (the credentials file is the state), writes the
0600 credentials file, and leaves applying it to a reload. A refusal is ``CommandError`` with a
message fit for both an operator's terminal and an API client; the CLI turns it into exit 1, the
API into 409 or 404. Secrets never appear in a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xks_proxy.config import Config, KeyStoreConfig, load_config, validate_credential
from xks_proxy.credentials import CredentialEntry, CredentialsFile, generate_credential
from xks_proxy.errors import CommandError, ConfigError


@dataclass(frozen=True, slots=True)
class CredentialRow:
    key_store: str
    access_key_id: str
    origin: str  # "created <time>" or "inline in the configuration"


def credentials_file(config: Config) -> CredentialsFile:
    if config.credentials_file is None:
        raise ConfigError("credentials_file: not set, so credentials cannot be managed")
    return CredentialsFile(config.credentials_file)


def _store(config_path: Path, key_store: str | None) -> tuple[Config, KeyStoreConfig]:
    # Credential management never uses a backend, so it needs none of its secrets (PIN, KEK).
    config = load_config(config_path, with_backends=False)
    return config, config.key_store(key_store)


def create(config_path: Path, key_store: str | None) -> tuple[KeyStoreConfig, CredentialEntry]:
    """A fresh credential for the key store (several may be live at once)."""
    config, store = _store(config_path, key_store)
    return store, credentials_file(config).add(store.name, generate_credential())


def add(
    config_path: Path, key_store: str | None, access_key_id: str, secret: str
) -> tuple[str, bool]:
    """Install a given credential: the key store's name, and False when it already had it."""
    config, store = _store(config_path, key_store)
    credential = validate_credential(access_key_id, secret, "credential")
    for other in config.key_stores:
        for existing in other.credentials:
            if existing.access_key_id != credential.access_key_id:
                continue
            if other.name == store.name and existing == credential:
                return store.name, False
            # XKS spec §6.2: an access key id identifies exactly one secret.
            raise CommandError(
                f"access key id {credential.access_key_id} is already in use by key store "
                f"{other.name} with another secret"
            )
    credentials_file(config).add(store.name, credential)
    return store.name, True


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
    return rows


def revoke(config_path: Path, key_store: str | None, access_key_id: str, force: bool) -> str:
    """Remove a credential; returns the key store's name."""
    config, store = _store(config_path, key_store)
    if access_key_id not in {c.access_key_id for c in store.credentials}:
        raise CommandError(f"key store {store.name} has no credential {access_key_id}")
    if len(store.credentials) == 1 and not force:
        raise CommandError(
            f"{access_key_id} is the last credential of key store {store.name}: without "
            "it every request is refused (add the new one first, or force)"
        )
    if credentials_file(config).remove(access_key_id) is None:
        raise CommandError(f"{access_key_id} is written in the configuration file; remove it there")
    return store.name
