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

``KeyDatabase`` is built in three layers: ``database.StoreDatabase`` (connection, lock, KEK
record, write transaction), ``snapshots.StoreSnapshots`` (the change feed, reads, the sealed
copy) and, here, the key lifecycle writes (create, rotate, enable, deletion, purge).
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime
from typing import NoReturn

from xks_proxy.config import SoftwareBackendConfig
from xks_proxy.keystore.connections import DuplicateRowError
from xks_proxy.keystore.database import INSERT_KEY, now_text
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
    StoredKey,
    UnknownKeyError,
)
from xks_proxy.keystore.sealing import KEY_BYTES
from xks_proxy.keystore.snapshots import StoreSnapshots

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


def store_location(config: SoftwareBackendConfig) -> StoreLocation:
    if config.database_url is not None:
        return StoreLocation.parse(config.database_url)
    assert config.path is not None
    return StoreLocation.parse(config.path)


def open_key_database(config: SoftwareBackendConfig) -> KeyDatabase:
    """The key store a software backend's configuration names."""
    return KeyDatabase(store_location(config), config.kek)


class KeyDatabase(StoreSnapshots):
    """A key store at ``location``: a ``Path`` or ``sqlite:PATH`` (SQLite), or a PostgreSQL URL,
    with its key lifecycle writes (``StoreDatabase`` says how it opens and what it raises).
    """

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
                INSERT_KEY,
                (key_id, ",".join(sorted(usage)), 1, int(internal), now_text(), None, revision,
                 origin, None, None),
            )  # fmt: skip
            if sealed is not None:
                self.insert_version(key_id, 1, sealed)

        try:
            self._write(create)
        except DuplicateRowError:
            raise KeyExistsError(key_id) from None

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
                    (key_id, revision, now_text()),
                )
            return due

        return self._write(purge)

    def ensure_health_key(self) -> None:
        with contextlib.suppress(KeyExistsError):
            self.create_key(HEALTH_KEY_ID, VALID_USAGES, internal=True)
