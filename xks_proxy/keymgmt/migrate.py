"""Moving a key store to another database (SQLite to PostgreSQL, or back) without re-keying.

Rows are copied exactly as sealed: the KEK stays the same, no material is ever unsealed for the
move (when a KEK is given, every version is first proved to unseal under it, so a store sealed
under another KEK is refused before anything is written). The copy is one transaction in the
destination: all keys or none. The internal health key is not copied: each store has its own.
A destination that already holds one of the key ids is refused, naming it. The destination
takes on the source's record of its KEK (``sealing``), so a proxy with another KEK is refused
there too.
"""

from __future__ import annotations

from dataclasses import dataclass

from xks_proxy.keystore.records import KeyRecord
from xks_proxy.keystore.store import KeyDatabase


@dataclass(frozen=True, slots=True)
class MigrationResult:
    keys: int
    versions: int


def migrate_keys(source: KeyDatabase, destination: KeyDatabase, *, verify: bool) -> MigrationResult:
    records = [record for record in source.records() if not record.internal]
    if verify:
        _prove_unsealable(source, records)
    destination.copy_records(records, source.kek_check())
    return MigrationResult(len(records), sum(len(r.versions) for r in records))


def _prove_unsealable(source: KeyDatabase, records: list[KeyRecord]) -> None:
    """Raises ``ConfigError`` naming the first version the KEK does not open."""
    for record in records:
        for version, sealed in record.versions.items():
            source.sealer.unseal(record.key_id, version, sealed)
