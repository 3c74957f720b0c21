"""The embedded key store: AES-256 keys in SQLite, encrypted at rest under a key-encryption key.

SQLite in WAL mode gives atomic writes and lets several proxy processes and the CLI use one file
at once. Each key version's material is sealed with AES-256-GCM under the KEK, with the key id
and version bound as AAD, so rows cannot be swapped between keys or versions unnoticed. The file
is created 0600 (SQLite gives its -wal and -shm files the same mode).

A key has a usage set, an enabled flag and versions 1..n; encryption uses the newest version,
decryption the one recorded in the ciphertext metadata. One internal key serves the health check
(xks-spec §4.4 says health checks SHOULD NOT use customer keys); it is never reachable by the API.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xks_proxy.backends.base import DECRYPT, ENCRYPT
from xks_proxy.errors import ConfigError

KEY_BYTES = 32
HEALTH_KEY_ID = "xks-proxy-internal-health-key"
VALID_USAGES = frozenset({ENCRYPT, DECRYPT})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    usage TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    internal INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS key_versions (
    key_id TEXT NOT NULL REFERENCES keys(key_id),
    version INTEGER NOT NULL,
    nonce BLOB NOT NULL,
    sealed BLOB NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (key_id, version)
);
"""


@dataclass(frozen=True, slots=True)
class StoredKey:
    """One key as stored: its versions' material is decrypted only when asked for."""

    key_id: str
    usage: frozenset[str]
    enabled: bool
    internal: bool
    created_at: str
    versions: dict[int, bytes] = field(repr=False)

    @property
    def newest_version(self) -> int:
        return max(self.versions)


class KeyExistsError(Exception):
    pass


class KeyStoreUnavailableError(ConfigError):
    """The key store file cannot be used now (full disk, read-only volume, I/O error, lock).

    A ConfigError, so start-up refuses to serve; the CLI tells it apart (exit 1, not 2): the
    configuration is right, the machine is not.
    """


class UnknownKeyError(Exception):
    pass


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _bound_aad(key_id: str, version: int) -> bytes:
    return f"xks-proxy key {key_id} version {version}".encode()


class KeyDatabase:
    """Synchronous access to the key store file; callers choose their thread."""

    def __init__(self, path: Path, kek: bytes) -> None:
        self.path = path
        self._kek = AESGCM(kek)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        except sqlite3.OperationalError as error:
            raise KeyStoreUnavailableError(f"key store {path}: {error}") from None
        except sqlite3.DatabaseError as error:
            raise ConfigError(f"key store {path}: {error}") from None

    def close(self) -> None:
        self._db.close()

    def data_version(self) -> int:
        """Changes whenever another connection commits; cheap enough to poll."""
        row = self._db.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def _seal(self, key_id: str, version: int, material: bytes) -> tuple[bytes, bytes]:
        nonce = os.urandom(12)
        return nonce, self._kek.encrypt(nonce, material, _bound_aad(key_id, version))

    def _unseal(self, key_id: str, version: int, nonce: bytes, sealed: bytes) -> bytes:
        try:
            return self._kek.decrypt(nonce, sealed, _bound_aad(key_id, version))
        except InvalidTag:
            raise ConfigError(
                f"key store {self.path}: key {key_id} version {version} does not decrypt under "
                "the configured key-encryption key (wrong kek, or the file was altered)"
            ) from None

    def create_key(self, key_id: str, usage: frozenset[str], *, internal: bool = False) -> None:
        if not usage <= VALID_USAGES:
            raise ValueError(f"usage must be a subset of {sorted(VALID_USAGES)}")
        nonce, sealed = self._seal(key_id, 1, os.urandom(KEY_BYTES))
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO keys VALUES (?, ?, 1, ?, ?)",
                    (key_id, ",".join(sorted(usage)), int(internal), _now()),
                )
                self._db.execute(
                    "INSERT INTO key_versions VALUES (?, 1, ?, ?, ?)",
                    (key_id, nonce, sealed, _now()),
                )
        except sqlite3.IntegrityError:
            raise KeyExistsError(key_id) from None

    def rotate_key(self, key_id: str) -> int:
        """Add a new version, which new encryptions use from then on; returns its number."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT MAX(version) FROM key_versions v JOIN keys k USING (key_id) "
                "WHERE key_id = ? AND internal = 0",
                (key_id,),
            ).fetchone()
            if row[0] is None:
                raise UnknownKeyError(key_id)
            version = int(row[0]) + 1
            nonce, sealed = self._seal(key_id, version, os.urandom(KEY_BYTES))
            self._db.execute(
                "INSERT INTO key_versions VALUES (?, ?, ?, ?, ?)",
                (key_id, version, nonce, sealed, _now()),
            )
        return version

    def set_enabled(self, key_id: str, enabled: bool) -> None:
        with self._db:
            cursor = self._db.execute(
                "UPDATE keys SET enabled = ? WHERE key_id = ? AND internal = 0",
                (int(enabled), key_id),
            )
        if cursor.rowcount == 0:
            raise UnknownKeyError(key_id)

    def ensure_health_key(self) -> None:
        with contextlib.suppress(KeyExistsError):
            self.create_key(HEALTH_KEY_ID, VALID_USAGES, internal=True)

    def load(self) -> list[StoredKey]:
        """Every key with its decrypted material, read in one consistent snapshot."""
        with self._db:
            self._db.execute("BEGIN")
            key_rows = self._db.execute(
                "SELECT key_id, usage, enabled, internal, created_at FROM keys ORDER BY key_id"
            ).fetchall()
            version_rows = self._db.execute(
                "SELECT key_id, version, nonce, sealed FROM key_versions"
            ).fetchall()
        versions: dict[str, dict[int, bytes]] = {}
        for key_id, version, nonce, sealed in version_rows:
            versions.setdefault(key_id, {})[version] = self._unseal(key_id, version, nonce, sealed)
        return [
            StoredKey(
                key_id=key_id,
                usage=frozenset(filter(None, usage.split(","))),
                enabled=bool(enabled),
                internal=bool(internal),
                created_at=created_at,
                versions=versions.get(key_id, {}),
            )
            for key_id, usage, enabled, internal, created_at in key_rows
        ]
