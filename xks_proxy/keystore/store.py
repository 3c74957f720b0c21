"""The key store: AES-256 keys in SQLite (embedded default) or PostgreSQL (shared by a fleet).

Both hold the same rows: each key version's material sealed under the KEK (``sealing``), a key's
usage set, an enabled flag and versions 1..n; encryption uses the newest version, decryption the
one recorded in the ciphertext metadata. One internal key serves the health check (xks-spec §4.4
says health checks SHOULD NOT use customer keys); it is never reachable by the API.

Every write runs in one transaction that bumps the store's revision and stamps it on the keys it
touched (``schema``), then (PostgreSQL) NOTIFYs the proxies; ``changes_since`` gives a reader
exactly the keys written after the revision it has, and the store's SigV4 credentials when any
of them changed (``keystore.credentials``). Writers serialise on the revision row, so a
rotation's "newest version + 1" cannot race. Access is synchronous: callers choose their thread.

The store records which KEK seals it (``store_meta.kek_check``, see ``sealing``). Opening it
with a KEK checks that record (a store without one is claimed, once a row proves the KEK opens
it); every write checks it again inside its transaction, and so does every read of changes: a
proxy still configured with the KEK a ``keys rewrap`` replaced writes nothing, and goes on
serving the keys it holds while its follower reports why it sees no more changes.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn, TypeVar

from xks_proxy.config import SoftwareBackendConfig
from xks_proxy.errors import CommandError, ConfigError
from xks_proxy.kek_config import Kek
from xks_proxy.keystore.connections import (
    DuplicateRowError,
    Row,
    StoreConnection,
    connect,
    transaction,
)
from xks_proxy.keystore.credentials import insert_credential, read_live
from xks_proxy.keystore.kek_record import adopt_kek, check_kek, claim_kek
from xks_proxy.keystore.location import StoreLocation
from xks_proxy.keystore.records import (
    HEALTH_KEY_ID,
    ORIGIN_EXTERNAL,
    ORIGIN_PROXY,
    VALID_USAGES,
    KeyExistsError,
    KeyRecord,
    KeyStateError,
    KeyStoreUnavailableError,
    SealedVersion,
    StoreChanges,
    StoredCredential,
    StoredKey,
    UnknownKeyError,
    gc_paused,
)
from xks_proxy.keystore.schema import migrate
from xks_proxy.keystore.sealing import KEY_BYTES, KeySealer, make_sealer

__all__ = [
    "HEALTH_KEY_ID",
    "KEY_BYTES",
    "VALID_USAGES",
    "KeyDatabase",
    "KeyExistsError",
    "KeyRecord",
    "KeyStateError",
    "StoreLocation",
    "KeyStoreUnavailableError",
    "StoredKey",
    "UnknownKeyError",
    "open_key_database",
]

T = TypeVar("T")
_INSERT_KEY = (
    "INSERT INTO keys (key_id, usage, enabled, internal, created_at, deletion_date, revision,"
    " origin, valid_to, material_fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# A store holds a handful of distinct usage sets; sharing them saves memory at 100,000 keys.
_USAGE_SETS: dict[str, frozenset[str]] = {}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _usage(text: str) -> frozenset[str]:
    usage = _USAGE_SETS.get(text)
    if usage is None:
        usage = _USAGE_SETS.setdefault(text, frozenset(filter(None, text.split(","))))
    return usage


def store_location(config: SoftwareBackendConfig) -> StoreLocation:
    if config.database_url is not None:
        return StoreLocation.parse(config.database_url)
    assert config.path is not None
    return StoreLocation.parse(config.path)


def open_key_database(config: SoftwareBackendConfig) -> KeyDatabase:
    """The key store a software backend's configuration names."""
    return KeyDatabase(store_location(config), config.kek)


class KeyDatabase:
    """A key store at ``location``: a ``Path`` or ``sqlite:PATH`` (SQLite), or a PostgreSQL URL.

    Opening it creates or migrates the schema. Raises ``KeyStoreUnavailableError`` when the database
    cannot be reached (now, or on any later call), ``ConfigError`` when it is not a key store.
    """

    def __init__(self, location: Path | str | StoreLocation, kek: Kek | None) -> None:
        self.location = (
            location if isinstance(location, StoreLocation) else StoreLocation.parse(location)
        )
        # Without a KEK the store can still be read and copied sealed (``keys migrate``).
        self._sealer = make_sealer(kek, self.location.display) if kek is not None else None
        try:
            self._db = connect(self.location)
        except BaseException:
            self._close_sealer()
            raise
        # One connection runs one transaction at a time, whichever thread asks (a proxy's
        # follower and sweeper share it).
        self._lock = threading.RLock()
        try:
            migrate(self._db)
            if self._sealer is not None:
                self._claim_or_check_kek(self._sealer)
        except BaseException:
            self._db.close()
            self._close_sealer()
            raise

    def close(self) -> None:
        # Under the lock: a sweeper or follower thread may be mid-query, and closing a SQLite
        # connection under a running statement crashes the process (seen as a segfault when a
        # proxy closed right after its first sweep started).
        with self._lock:
            self._db.close()
        self._close_sealer()

    def _close_sealer(self) -> None:
        if self._sealer is not None:
            self._sealer.close()

    def kek_check(self) -> str | None:
        """Which KEK seals the store (``sealing``), or None for a store no KEK opened yet."""
        with self._lock:
            value: str | None = self._db.query("SELECT kek_check FROM store_meta")[0][0]
            return value

    def _check_kek(self, stored: str | None) -> None:
        if self._sealer is not None:
            check_kek(self.location, stored, self._sealer)

    def _claim_or_check_kek(self, sealer: KeySealer) -> None:
        if self.kek_check() is None:
            with self._lock, transaction(self._db, self._db.begin_write):
                claim_kek(self._db, sealer)
        check_kek(self.location, self.kek_check(), sealer)

    @property
    def sealer(self) -> KeySealer:
        if self._sealer is None:
            raise ConfigError(f"key store {self.location.display}: opened without its kek")
        return self._sealer

    def _write(self, change: Callable[[int], T]) -> T:
        """Run ``change(revision)`` in a write transaction that takes the next revision."""
        with self._lock, transaction(self._db, self._db.begin_write):
            rows = self._db.query(
                "UPDATE store_meta SET revision = revision + 1 RETURNING revision, kek_check"
            )
            # Nothing is sealed under a KEK the store no longer uses (``keys rewrap``).
            self._check_kek(rows[0][1])
            revision = int(rows[0][0])
            result = change(revision)
            self._db.notify(revision)
        return result

    def write_transaction(self, change: Callable[[StoreConnection, int], T]) -> T:
        """Run ``change(connection, revision)`` in one write transaction (``keystore.imported``)."""
        return self._write(lambda revision: change(self._db, revision))

    def read(self, sql: str, params: tuple[object, ...] = ()) -> list[Row]:
        with self._lock:
            return self._db.query(sql, params)

    def revision(self) -> int:
        """The store's current revision: cheap enough to poll every second."""
        with self._lock:
            return int(self._db.query("SELECT revision FROM store_meta")[0][0])

    def create_key(
        self,
        key_id: str,
        usage: frozenset[str],
        *,
        internal: bool = False,
        origin: str = ORIGIN_PROXY,
    ) -> None:
        """A key with fresh material, or (``origin`` external) none until material is imported."""
        if not usage <= VALID_USAGES:
            raise ValueError(f"usage must be a subset of {sorted(VALID_USAGES)}")
        external = origin == ORIGIN_EXTERNAL
        sealed = None if external else self.sealer.seal(key_id, 1, os.urandom(KEY_BYTES))

        def create(revision: int) -> None:
            if self._db.query("SELECT 1 FROM deleted_keys WHERE key_id = ?", (key_id,)):
                # A ciphertext under the deleted key must never meet a new key of that name.
                raise KeyStateError(f"key {key_id} was deleted; key ids are never reused")
            self._db.query(
                _INSERT_KEY,
                (key_id, ",".join(sorted(usage)), 1, int(internal), _now(), None, revision,
                 origin, None, None),
            )  # fmt: skip
            if sealed is not None:
                self.insert_version(key_id, 1, sealed)

        try:
            self._write(create)
        except DuplicateRowError:
            raise KeyExistsError(key_id) from None

    def insert_version(self, key_id: str, version: int, sealed: SealedVersion) -> None:
        """Add a sealed version; only inside a write transaction (``write_transaction``)."""
        self._db.query(
            "INSERT INTO key_versions (key_id, version, nonce, sealed, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (key_id, version, sealed.nonce, sealed.sealed, _now()),
        )

    def rotate_key(self, key_id: str) -> int:
        """Add a new version, which new encryptions use from then on; returns its number."""

        def rotate(revision: int) -> int:
            touched = self._db.query(
                "UPDATE keys SET revision = ? WHERE key_id = ? AND internal = 0 "
                "AND deletion_date IS NULL RETURNING key_id",
                (revision, key_id),
            )
            if not touched:
                self._refuse(key_id, pending=False)
            if self._db.query(
                "SELECT 1 FROM keys WHERE key_id = ? AND origin = ?", (key_id, ORIGIN_EXTERNAL)
            ):
                raise KeyStateError(
                    f"key {key_id} has imported key material, and imported keys cannot be "
                    "rotated (as in AWS KMS): create a new key with --origin external and "
                    "import new material into it"
                )
            rows = self._db.query(
                "SELECT MAX(version) FROM key_versions WHERE key_id = ?", (key_id,)
            )
            version = int(rows[0][0]) + 1
            self.insert_version(
                key_id, version, self.sealer.seal(key_id, version, os.urandom(KEY_BYTES))
            )
            return version

        return self._write(rotate)

    def set_enabled(self, key_id: str, enabled: bool) -> None:
        self._update_key(key_id, "enabled = ?", (int(enabled),), pending=False)

    def schedule_deletion(self, key_id: str, deletion_date: datetime) -> None:
        """The key is DISABLED now and purged by the sweeper after ``deletion_date``."""
        when = deletion_date.astimezone(UTC).isoformat(timespec="seconds")
        self._update_key(key_id, "enabled = 0, deletion_date = ?", (when,), pending=False)

    def cancel_deletion(self, key_id: str) -> None:
        """The key stays DISABLED (as in KMS); ``keys enable`` makes it usable again."""
        self._update_key(key_id, "deletion_date = NULL", (), pending=True)

    def _update_key(
        self, key_id: str, assignments: str, params: tuple[object, ...], *, pending: bool
    ) -> None:
        """Change a customer key whose deletion is (``pending``) or is not scheduled."""
        condition = "deletion_date IS NOT NULL" if pending else "deletion_date IS NULL"
        # Both fragments are constants of this module; values are bound parameters.
        sql = (
            f"UPDATE keys SET {assignments}, revision = ? "  # noqa: S608
            f"WHERE key_id = ? AND internal = 0 AND {condition} RETURNING key_id"
        )

        def update(revision: int) -> None:
            if not self._db.query(sql, (*params, revision, key_id)):
                self._refuse(key_id, pending=pending)

        self._write(update)

    def _refuse(self, key_id: str, *, pending: bool) -> NoReturn:
        rows = self._db.query(
            "SELECT deletion_date FROM keys WHERE key_id = ? AND internal = 0", (key_id,)
        )
        if not rows:
            raise UnknownKeyError(key_id)
        if pending:
            raise KeyStateError(f"key {key_id} is not pending deletion")
        raise KeyStateError(
            f"key {key_id} is pending deletion on {rows[0][0]}; cancel the deletion first"
        )

    def purge_due(self, now: datetime) -> list[str]:
        """Delete, for good, the keys whose deletion date has passed; returns their ids.

        Safe with several proxies sweeping at once: the purge runs in a write transaction
        (writers serialise), so a key is purged once and the others find nothing to do.
        """
        when = now.astimezone(UTC).isoformat(timespec="seconds")
        due_sql = (
            "SELECT key_id FROM keys WHERE internal = 0 "
            "AND deletion_date IS NOT NULL AND deletion_date <= ?"
        )
        with self._lock:
            if not self._db.query(due_sql, (when,)):
                return []  # the common case costs one read, and no revision

        def purge(revision: int) -> list[str]:
            due = [row[0] for row in self._db.query(due_sql, (when,))]
            for key_id in due:
                self._db.query("DELETE FROM key_versions WHERE key_id = ?", (key_id,))
                self._db.query("DELETE FROM keys WHERE key_id = ?", (key_id,))
                self._db.query(
                    "INSERT INTO deleted_keys (key_id, revision, deleted_at) VALUES (?, ?, ?)",
                    (key_id, revision, _now()),
                )
            return due

        return self._write(purge)

    def ensure_health_key(self) -> None:
        with contextlib.suppress(KeyExistsError):
            self.create_key(HEALTH_KEY_ID, VALID_USAGES, internal=True)

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
                        _INSERT_KEY,
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
