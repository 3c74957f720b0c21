"""Reading the key store: the keys written after a revision (the change feed every proxy
follows), every key sealed or unsealed, and copying keys in exactly as they were sealed elsewhere
(``keys migrate``, ``keys restore``).
"""

from __future__ import annotations

from collections.abc import Iterable

from xks_proxy.errors import CommandError
from xks_proxy.keystore.connections import DuplicateRowError, Row, transaction
from xks_proxy.keystore.credentials import insert_credential, read_live
from xks_proxy.keystore.database import INSERT_KEY, StoreDatabase
from xks_proxy.keystore.kek_record import adopt_kek
from xks_proxy.keystore.records import (
    KeyExistsError,
    KeyRecord,
    SealedVersion,
    StoreChanges,
    StoredCredential,
    StoredKey,
    gc_paused,
)

# A store holds a handful of distinct usage sets; sharing them saves memory at 100,000 keys.
_USAGE_SETS: dict[str, frozenset[str]] = {}


def _usage(text: str) -> frozenset[str]:
    usage = _USAGE_SETS.get(text)
    if usage is None:
        usage = _USAGE_SETS.setdefault(text, frozenset(filter(None, text.split(","))))
    return usage


class StoreSnapshots(StoreDatabase):
    """The reads of a key store, each in one consistent snapshot, and the sealed copy."""

    def changes_since(self, seen: int) -> StoreChanges | None:
        """Keys written after revision ``seen``, in one consistent snapshot; None if nothing.

        ``seen`` < 0, or a store whose revision went backwards (replaced by another database),
        gives every key with ``complete`` set: the reader replaces what it has.
        """
        with self._lock, transaction(self._db, self._db.begin_read):
            meta = self._db.query("SELECT revision, kek_check FROM store_meta")[0]
            revision = int(meta[0])
            if revision == seen:
                return None
            self._check_kek(meta[1])
            complete = seen < 0 or revision < seen
            since = -1 if complete else seen
            deleted = (
                []
                if complete
                else [
                    row[0]
                    for row in self._db.query(
                        "SELECT key_id FROM deleted_keys WHERE revision > ?", (since,)
                    )
                ]
            )
            credentials_changed = complete or self._db.query(
                "SELECT 1 FROM credentials WHERE revision > ? LIMIT 1", (since,)
            )
            credentials = read_live(self._db) if credentials_changed else None
            with gc_paused(freeze=complete):
                keys = _records(
                    self._db.rows(
                        "SELECT key_id, usage, enabled, internal, created_at, deletion_date,"
                        " origin, valid_to, material_fingerprint FROM keys WHERE revision > ?",
                        (since,),
                    ),
                    self._db.rows(
                        # A full read (the start-up of a proxy over 100,000 keys) needs no join.
                        "SELECT key_id, version, nonce, sealed FROM key_versions"
                        if complete
                        else "SELECT v.key_id, v.version, v.nonce, v.sealed FROM key_versions v "
                        "JOIN keys k ON k.key_id = v.key_id WHERE k.revision > ?",
                        () if complete else (since,),
                    ),
                )
        return StoreChanges(revision, keys, complete, deleted, credentials)

    def records(self) -> list[KeyRecord]:
        """Every key, sealed, in one consistent snapshot."""
        changes = self.changes_since(-1)
        assert changes is not None
        return changes.keys

    def load(self) -> list[StoredKey]:
        """Every key with its material unsealed: proves the KEK opens every version."""
        return [
            StoredKey(
                key_id=r.key_id,
                usage=r.usage,
                enabled=r.enabled,
                internal=r.internal,
                created_at=r.created_at,
                versions={v: self.sealer.unseal(r.key_id, v, s) for v, s in r.versions.items()},
                deletion_date=r.deletion_date,
                origin=r.origin,
                valid_to=r.valid_to,
                material_fingerprint=r.material_fingerprint,
            )
            for r in self.records()
        ]

    def copy_records(
        self,
        records: Iterable[KeyRecord],
        credentials: Iterable[StoredCredential] = (),
        kek_check: str | None = None,
    ) -> int:
        """Insert keys (and stored credentials) exactly as sealed elsewhere (same KEK), all or
        none; for ``keys migrate``.

        ``kek_check``: the source's record of its KEK, which this store takes on (refused if it
        records another). Raises ``KeyExistsError`` naming the first key id this store has
        already, ``CommandError`` for an access key id it has already.
        """
        records = list(records)
        credentials = list(credentials)

        def copy(revision: int) -> int:
            if kek_check is not None:
                adopt_kek(self._db, kek_check)
            for record in records:
                try:
                    self._db.query(
                        INSERT_KEY,
                        (
                            record.key_id,
                            ",".join(sorted(record.usage)),
                            int(record.enabled),
                            int(record.internal),
                            record.created_at,
                            record.deletion_date,
                            revision,
                            record.origin,
                            record.valid_to,
                            record.material_fingerprint,
                        ),
                    )
                except DuplicateRowError:
                    raise KeyExistsError(record.key_id) from None
                for version, sealed in sorted(record.versions.items()):
                    self.insert_version(record.key_id, version, sealed)
            for stored in credentials:
                try:
                    insert_credential(self._db, stored, revision)
                except DuplicateRowError:
                    raise CommandError(
                        f"key store {self.location.display} already has credential "
                        f"{stored.access_key_id}; nothing was copied"
                    ) from None
            return len(records)

        return self._write(copy)


def _records(key_rows: Iterable[Row], version_rows: Iterable[Row]) -> list[KeyRecord]:
    """Rows as they come (both drivers return BLOB/BYTEA as bytes and integers as int) into
    records, with as little work per row as Python allows: at 100,000 keys this loop is most
    of a proxy's start-up. ``tuple.__new__`` builds the named tuples without the Python-level
    ``__new__`` a named tuple's constructor runs; key ids, dates and sealed bytes are kept as
    read (they were checked when written; dates are parsed when a request needs one). The
    version rows are read first, then the key rows (both streamed, ``StoreConnection.rows``)."""
    new = tuple.__new__
    versions: dict[str, dict[int, SealedVersion]] = {}
    for key_id, version, nonce, sealed in version_rows:
        of_key = versions.get(key_id)
        if of_key is None:
            versions[key_id] = {version: new(SealedVersion, (nonce, sealed))}
        else:
            of_key[version] = new(SealedVersion, (nonce, sealed))
    no_versions: dict[int, SealedVersion] = {}
    usages = _USAGE_SETS
    return [
        new(KeyRecord, (
            key_id,
            usages.get(usage) or _usage(usage),
            enabled == 1,
            internal == 1,
            created_at,
            versions.get(key_id, no_versions),
            deletion_date,
            origin,
            valid_to,
            fingerprint,
        ))
        for (
            key_id, usage, enabled, internal, created_at, deletion_date, origin, valid_to,
            fingerprint,
        ) in key_rows
    ]  # fmt: skip
