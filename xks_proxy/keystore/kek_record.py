"""The store's record of the KEK that seals it: ``store_meta.kek_check`` (see ``sealing``).

A KEK opening a store without a record (new, or made before the record existed) claims it once
one of its rows proves the KEK opens it; a store whose record names another KEK is refused with
a message naming both. ``keys migrate`` hands the record on with the rows it copies.
"""

from __future__ import annotations

from xks_proxy.keystore.connections import StoreConnection
from xks_proxy.keystore.location import StoreLocation
from xks_proxy.keystore.records import SealedVersion
from xks_proxy.keystore.sealing import KekMismatchError, KeySealer, describe_identity


def check_kek(location: StoreLocation, stored: str | None, sealer: KeySealer) -> None:
    """Refuse to go on with a KEK other than the one the store records."""
    if stored is None or stored == sealer.identity:
        return
    raise KekMismatchError(
        f"key store {location.display} is sealed under {describe_identity(stored)}, "
        f"but the configured key-encryption key is {sealer} (wrong kek): configure the KEK the "
        "store is sealed under (after `xks-proxy keys rewrap`, the new one) and restart"
    )


def claim_kek(db: StoreConnection, sealer: KeySealer) -> None:
    """Record ``sealer``'s KEK if the store records none; inside a write transaction."""
    if db.query("SELECT kek_check FROM store_meta")[0][0] is not None:
        return
    # One row of each kind must unseal first (a ConfigError naming it if not).
    rows = db.query("SELECT key_id, version, nonce, sealed FROM key_versions LIMIT 1")
    for key_id, version, nonce, sealed in rows:
        sealer.unseal(key_id, version, SealedVersion(nonce, sealed))
    rows = db.query("SELECT name, nonce, sealed FROM import_secrets LIMIT 1")
    for name, nonce, sealed in rows:
        sealer.unseal_secret(name, SealedVersion(nonce, sealed))
    db.query("UPDATE store_meta SET kek_check = ?", (sealer.identity,))


def adopt_kek(db: StoreConnection, kek_check: str) -> None:
    """Take on another store's record along with its rows; inside a write transaction."""
    stored = db.query("SELECT kek_check FROM store_meta")[0][0]
    if stored not in (None, kek_check):
        raise KekMismatchError(
            f"key store {db.location.display} is sealed under {describe_identity(stored)}, "
            f"the source under {describe_identity(kek_check)}: rows cannot be copied between them"
        )
    db.query("UPDATE store_meta SET kek_check = ?", (kek_check,))
