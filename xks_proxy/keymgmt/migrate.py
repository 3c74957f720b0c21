"""Moving a key store to another database (SQLite to PostgreSQL, or back) without re-keying.

Rows are copied exactly as sealed: the KEK stays the same, no material is ever unsealed for the
move (when a KEK is given, every version is first proved to unseal under it, so a store sealed
under another KEK is refused before anything is written). The copy is one transaction in the
destination: all keys or none. The internal health key is not copied: each store has its own.
A destination that already holds one of the key ids is refused, naming it. SigV4 credentials
kept in the store (``credentials_store = "database"``) move with the keys, sealed as they were
(their seal binds key store and access key id, not the database). The destination takes on the
source's record of its KEK (``sealing``), so a proxy with another KEK is refused there too.
"""

from __future__ import annotations

from dataclasses import dataclass

from xks_proxy.keystore.credentials import CredentialTable, unseal_credential
from xks_proxy.keystore.records import KeyRecord
from xks_proxy.keystore.store import KeyDatabase


@dataclass(frozen=True, slots=True)
class MigrationResult:
    keys: int
    versions: int
    credentials: int = 0


def migrate_keys(source: KeyDatabase, destination: KeyDatabase, *, verify: bool) -> MigrationResult:
    records = [record for record in source.records() if not record.internal]
    credentials = CredentialTable(source).all_live()
    if verify:
        _prove_unsealable(source, records)
        for stored in credentials:
            unseal_credential(source.sealer, stored)
    destination.copy_records(records, credentials, source.kek_check())
    versions = sum(len(r.versions) for r in records)
    return MigrationResult(len(records), versions, len(credentials))


def _prove_unsealable(source: KeyDatabase, records: list[KeyRecord]) -> None:
    """Raises ``ConfigError`` naming the first version the KEK does not open."""
    for record in records:
        for version, sealed in record.versions.items():
            source.sealer.unseal(record.key_id, version, sealed)
