"""The open key store: its connection, the lock that serialises its users, the record of the
KEK that seals it, and the write transaction every change runs in (the next revision, the KEK
checked again, then NOTIFY). ``store.KeyDatabase`` builds its reads (``snapshots``) and key
lifecycle writes on it; ``store.py`` says what the store holds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from xks_proxy.errors import ConfigError
from xks_proxy.kek_config import Kek
from xks_proxy.keystore.connections import Row, StoreConnection, connect, transaction
from xks_proxy.keystore.kek_record import check_kek, claim_kek
from xks_proxy.keystore.location import StoreLocation
from xks_proxy.keystore.records import SealedVersion
from xks_proxy.keystore.schema import migrate
from xks_proxy.keystore.sealing import KeySealer, make_sealer

T = TypeVar("T")
INSERT_KEY = (
    "INSERT INTO keys (key_id, usage, enabled, internal, created_at, deletion_date, revision,"
    " origin, valid_to, material_fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class StoreDatabase:
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

    def insert_version(self, key_id: str, version: int, sealed: SealedVersion) -> None:
        """Add a sealed version; only inside a write transaction (``write_transaction``)."""
        self._db.query(
            "INSERT INTO key_versions (key_id, version, nonce, sealed, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (key_id, version, sealed.nonce, sealed.sealed, now_text()),
        )
