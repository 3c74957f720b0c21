"""One synchronous connection to a key store's database, SQLite or PostgreSQL, behind one API.

The stores' SQL is written once, with ``?`` placeholders and portable types; each connection
supplies what differs (placeholders, BLOB or BYTEA, how a writer takes the store's lock, change
notification) and translates its driver's errors at this edge: a unique-key violation becomes
``DuplicateRowError``, a database that cannot be reached ``KeyStoreUnavailableError`` naming the
store (never its password). PostgreSQL is reached with psycopg 3; a broken connection is dropped
and the next call connects again, so a store that comes back is used again without a restart.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.pq import TransactionStatus

from xks_proxy.errors import ConfigError
from xks_proxy.keystore.location import POSTGRESQL, StoreLocation
from xks_proxy.keystore.records import KeyStoreUnavailableError

# Every write transaction ends with a NOTIFY on this channel; proxies LISTEN to it.
NOTIFY_CHANNEL = "xks_proxy_keys"
# Seconds to wait for PostgreSQL to accept a connection before calling it unreachable.
CONNECT_TIMEOUT_SECONDS = 5
# A database that vanishes without closing the connection (a partition, a dead host) must fail
# a query within seconds, not after the kernel's two-hour keepalive: libpq's TCP settings.
TCP_SETTINGS: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,  # milliseconds
}
# pg_advisory_xact_lock key serialising schema migrations of one database ("xks" in ASCII).
_MIGRATION_LOCK = 0x786B73

Row = tuple[Any, ...]


class DuplicateRowError(Exception):
    pass


class StoreConnection(Protocol):
    location: StoreLocation
    blob_type: str
    begin_write: str
    begin_read: str

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[Row]: ...

    def rows(self, sql: str, params: tuple[object, ...] = ()) -> Iterator[Row]:
        """A large read's rows one at a time, inside the caller's transaction: what is built
        from them never coexists with a list of them all (at 100,000 keys, tens of MiB)."""
        ...

    def table_exists(self, name: str) -> bool: ...

    def lock_for_migration(self) -> None: ...

    def notify(self, revision: int) -> None: ...

    def close(self) -> None: ...


@contextlib.contextmanager
def transaction(db: StoreConnection, begin: str) -> Iterator[None]:
    """``begin`` … COMMIT, or ROLLBACK when the body raises (the body's error is what surfaces)."""
    db.query(begin)
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            db.query("ROLLBACK")
        raise
    db.query("COMMIT")


def connect(location: StoreLocation) -> StoreConnection:
    if location.kind == POSTGRESQL:
        return PostgresConnection(location)
    return SqliteConnection(location)


class SqliteConnection:
    """The embedded store: WAL mode, so proxies and the CLI share the file; created 0600."""

    blob_type = "BLOB"
    # IMMEDIATE takes the write lock at once, so read-modify-write never deadlocks.
    begin_write = "BEGIN IMMEDIATE"
    begin_read = "BEGIN"

    def __init__(self, location: StoreLocation) -> None:
        self.location = location
        path = Path(location.target)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=5000")
        except sqlite3.OperationalError as error:
            # Full disk, read-only volume, I/O error, lock: the machine, not the configuration.
            raise KeyStoreUnavailableError(f"key store {path}: {error}") from None
        except sqlite3.DatabaseError as error:
            raise ConfigError(f"key store {path}: {error}") from None

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[Row]:
        with self._errors():
            return self._db.execute(sql, params).fetchall()

    def rows(self, sql: str, params: tuple[object, ...] = ()) -> Iterator[Row]:
        with self._errors():
            yield from self._db.execute(sql, params)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.IntegrityError:
            raise DuplicateRowError() from None
        except sqlite3.OperationalError as error:
            raise KeyStoreUnavailableError(f"key store {self.location.display}: {error}") from None
        except sqlite3.DatabaseError as error:
            raise ConfigError(f"key store {self.location.display}: {error}") from None

    def table_exists(self, name: str) -> bool:
        rows = self.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return bool(rows)

    def lock_for_migration(self) -> None:
        """``begin_write`` already holds the only write lock."""

    def notify(self, revision: int) -> None:
        """Readers of a file poll its revision; there is nobody to tell."""

    def close(self) -> None:
        self._db.close()


class PostgresConnection:
    """The shared store; autocommit, with explicit transactions (the same SQL as SQLite)."""

    blob_type = "BYTEA"
    begin_write = "BEGIN"
    # One snapshot for a whole read, as SQLite's BEGIN gives.
    begin_read = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

    def __init__(self, location: StoreLocation) -> None:
        self.location = location
        self._db: psycopg.Connection[Row] | None = None
        self._closed = False

    def _connection(self) -> psycopg.Connection[Row]:
        if self._closed:
            # A query still running in a thread when its owner closed the store must not open
            # a new connection that nobody would close.
            raise KeyStoreUnavailableError(f"key store {self.location.display}: closed")
        if self._db is None or self._db.closed or self._db.broken:
            self._db = connect_postgres(self.location)
        return self._db

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[Row]:
        # A connection idle across a server restart fails on its next use. Outside a
        # transaction (every write here runs inside one) nothing was done, so one retry on a
        # fresh connection is safe and spares the caller a spurious outage.
        idle = self._db is not None and self._db.info.transaction_status is TransactionStatus.IDLE
        try:
            return self._execute(sql, params)
        except KeyStoreUnavailableError:
            if not idle:
                raise
        return self._execute(sql, params)

    def _execute(self, sql: str, params: tuple[object, ...]) -> list[Row]:
        cursor = self._cursor(sql, params)
        return cursor.fetchall() if cursor.description is not None else []

    def rows(self, sql: str, params: tuple[object, ...] = ()) -> Iterator[Row]:
        # libpq holds the whole result once execute returns; rows become tuples as read.
        yield from self._cursor(sql, params)

    def _cursor(self, sql: str, params: tuple[object, ...]) -> psycopg.Cursor[Row]:
        try:
            return self._connection().execute(sql.replace("?", "%s"), params)
        except psycopg.errors.UniqueViolation:
            raise DuplicateRowError() from None
        except (psycopg.OperationalError, psycopg.InterfaceError) as error:
            if self._db is not None:
                self._db.close()
            raise unavailable(self.location, error) from None

    def table_exists(self, name: str) -> bool:
        return self.query("SELECT to_regclass(?) IS NOT NULL", (name,))[0][0] is True

    def lock_for_migration(self) -> None:
        self.query("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))

    def notify(self, revision: int) -> None:
        # Delivered at COMMIT, and only if the transaction commits.
        self.query("SELECT pg_notify(?, ?)", (NOTIFY_CHANNEL, str(revision)))

    def close(self) -> None:
        self._closed = True
        if self._db is not None:
            self._db.close()


def connect_postgres(location: StoreLocation) -> psycopg.Connection[Row]:
    try:
        return psycopg.connect(conninfo(location, "xks-proxy"), autocommit=True)
    except psycopg.OperationalError as error:
        raise unavailable(location, error) from None
    except psycopg.ProgrammingError as error:
        raise ConfigError(f"key store {location.display}: {error}") from None


def conninfo(location: StoreLocation, application_name: str) -> str:
    """The store's URL plus the settings that make an outage visible within seconds (they
    override the same keys given in the URL)."""
    return make_conninfo(
        location.target,
        application_name=application_name,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        **TCP_SETTINGS,
    )


def unavailable(location: StoreLocation, error: Exception) -> KeyStoreUnavailableError:
    # psycopg's messages name host and port, never the password; keep the first line.
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return KeyStoreUnavailableError(f"key store {location.display} is unreachable: {reason}")
