"""Resealing every sealed row of a key store under another KEK, in one write transaction.

Every key version and every sealed store secret is unsealed under the store's KEK, sealed under
the new one, and proved to unseal under the new one to the same bytes before it is written; the
store's record of its KEK (``store_meta.kek_check``) changes in the same transaction. A failure
or a killed process anywhere before COMMIT leaves the store exactly as it was, all rows under the
old KEK; after COMMIT all rows are under the new one. Material never leaves this process.

Keys are not stamped with the new revision: their material, state and versions are unchanged, so
a proxy holding them in memory has nothing to forget (it learns of the new KEK from
``changes_since``, see ``store``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from xks_proxy.errors import ConfigError
from xks_proxy.keystore.connections import Row, StoreConnection
from xks_proxy.keystore.credentials import secret_name
from xks_proxy.keystore.records import KeyStateError, SealedVersion
from xks_proxy.keystore.sealing import KeySealer
from xks_proxy.keystore.store import KeyDatabase


@dataclass(frozen=True, slots=True)
class SealedSecretTable:
    """A table of secrets sealed with ``seal_secret``: its key columns, and the name each
    row's secret is bound to."""

    table: str
    key_columns: tuple[str, ...]
    name: Callable[[Row], str]


# Every table of sealed store secrets. A table added by a later schema step is listed here, or
# ``keys rewrap`` would leave it under the old KEK. Revoked credentials (secret erased) are
# skipped by ``sealed IS NOT NULL``.
SEALED_SECRET_TABLES = (
    SealedSecretTable("import_secrets", ("name",), lambda key: str(key[0])),
    SealedSecretTable(
        "credentials",
        ("key_store", "access_key_id"),
        lambda key: secret_name(str(key[0]), str(key[1])),
    ),
)


@dataclass(frozen=True, slots=True)
class ResealResult:
    versions: int
    secrets: int
    old_identity: str
    new_identity: str


def _unverified(new: KeySealer, what: str) -> ConfigError:
    return ConfigError(f"{what} does not unseal under the new KEK ({new}); nothing was changed")


def reseal_store(database: KeyDatabase, new: KeySealer) -> ResealResult:
    """Reseal every row of ``database`` (opened with its KEK) under ``new``."""
    old = database.sealer
    if new.identity == old.identity:
        raise KeyStateError(f"the key store is sealed under this KEK already ({new})")

    def reseal(db: StoreConnection, revision: int) -> ResealResult:
        versions = db.query("SELECT key_id, version, nonce, sealed FROM key_versions")
        for key_id, version, nonce, sealed in versions:
            material = old.unseal(key_id, version, SealedVersion(nonce, sealed))
            resealed = new.seal(key_id, version, material)
            if new.unseal(key_id, version, resealed) != material:
                raise _unverified(new, f"key {key_id} version {version}")
            db.query(
                "UPDATE key_versions SET nonce = ?, sealed = ? WHERE key_id = ? AND version = ?",
                (resealed.nonce, resealed.sealed, key_id, version),
            )
        secrets = sum(_reseal_secrets(db, table, old, new) for table in SEALED_SECRET_TABLES)
        db.query("UPDATE store_meta SET kek_check = ?", (new.identity,))
        return ResealResult(len(versions), secrets, old.identity, new.identity)

    return database.write_transaction(reseal)


def _reseal_secrets(
    db: StoreConnection, table: SealedSecretTable, old: KeySealer, new: KeySealer
) -> int:
    keys = ", ".join(table.key_columns)
    match = " AND ".join(f"{column} = ?" for column in table.key_columns)
    # Table and column names are constants of this module; values are bound parameters.
    rows = db.query(
        f"SELECT {keys}, nonce, sealed FROM {table.table} WHERE sealed IS NOT NULL"  # noqa: S608
    )
    for row in rows:
        key, (nonce, sealed) = row[: len(table.key_columns)], row[len(table.key_columns) :]
        name = table.name(key)
        secret = old.unseal_secret(name, SealedVersion(nonce, sealed))
        resealed = new.seal_secret(name, secret)
        if new.unseal_secret(name, resealed) != secret:
            raise _unverified(new, f"secret {name}")
        db.query(
            f"UPDATE {table.table} SET nonce = ?, sealed = ? WHERE {match}",  # noqa: S608
            (resealed.nonce, resealed.sealed, *key),
        )
    return len(rows)
