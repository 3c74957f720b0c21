"""The emulator's state in SQLite: key stores, keys (with their inner-layer material) and
aliases, so keys and ciphertexts survive a restart. It is a development tool: the material is
stored as is, not wrapped.

Every resource belongs to a region (the SigV4 scope of the request that created it); aliases
are unique per region, as in AWS.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS key_stores (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (id TEXT PRIMARY KEY, doc TEXT NOT NULL); -- id: the key ARN
CREATE TABLE IF NOT EXISTS regional_aliases (
    region TEXT NOT NULL, name TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (region, name));
"""
# Before regions: aliases (name PRIMARY KEY, key_id). Moved into their key's region on open.
_LEGACY_ALIASES = "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'aliases'"
DEFAULT_REGION = "us-east-1"


class KeyState(StrEnum):
    """KeyMetadata.KeyState (the Developer Guide's "Key states of AWS KMS keys")."""

    ENABLED = "Enabled"
    DISABLED = "Disabled"
    PENDING_DELETION = "PendingDeletion"
    PENDING_IMPORT = "PendingImport"
    UNAVAILABLE = "Unavailable"  # reported only: a key whose custom key store is not connected


class ConnectionState(StrEnum):
    CONNECTED = "CONNECTED"
    CONNECTING = "CONNECTING"
    DISCONNECTED = "DISCONNECTED"
    DISCONNECTING = "DISCONNECTING"
    FAILED = "FAILED"


class Origin(StrEnum):
    AWS_KMS = "AWS_KMS"
    EXTERNAL = "EXTERNAL"  # imported key material
    EXTERNAL_KEY_STORE = "EXTERNAL_KEY_STORE"


@dataclass
class KeyStore:
    id: str
    name: str
    endpoint: str
    uri_path: str
    access_key_id: str
    secret: str = field(repr=False)
    connectivity: str = "PUBLIC_ENDPOINT"
    state: ConnectionState = ConnectionState.DISCONNECTED
    error_code: str | None = None
    created: float = 0.0
    region: str = ""  # "" in databases written before regions: filled in on load

    def __post_init__(self) -> None:
        self.state = ConnectionState(self.state)


@dataclass
class Rotation:
    """One completed rotation of a key's material (ListKeyRotations)."""

    material_id: str
    date: float
    kind: str  # RotationType: AUTOMATIC or ON_DEMAND


@dataclass
class Grant:
    """A grant on a key (CreateGrant); ``token`` is what RetireGrant accepts."""

    id: str
    token: str = field(repr=False)
    operations: list[str]
    created: float
    grantee: str | None = None
    retiring: str | None = None
    name: str | None = None
    constraints: dict[str, dict[str, str]] | None = None


@dataclass
class ImportParameters:
    """One GetParametersForImport answer: its wrapping key's private half, until it expires."""

    private_key: str = field(repr=False)  # PEM, PKCS#8
    algorithm: str
    valid_to: float


@dataclass
class Key:
    id: str
    arn: str
    account: str
    region: str
    origin: Origin
    key_spec: str = "SYMMETRIC_DEFAULT"
    key_usage: str = "ENCRYPT_DECRYPT"
    # Base64 of the material by KeyMaterialId; the current one is used. For symmetric keys the
    # inner-layer AES-256 key, else what ``key_specs`` makes (PKCS#8 DER, HMAC key bytes).
    materials: dict[str, str] = field(default_factory=dict, repr=False)
    current_material: str | None = None
    description: str = ""
    state: KeyState = KeyState.ENABLED
    created: float = 0.0
    key_store_id: str | None = None
    xks_key_id: str | None = None
    deletion_date: float | None = None
    pending_window_days: int | None = None
    rotation_enabled: bool = False
    rotation_period_days: int | None = None
    rotation_start: float | None = None  # when the rotation period started counting
    rotations: list[Rotation] = field(default_factory=list)
    multi_region: bool = False
    primary: bool = True  # of a multi-Region key: the primary, or a replica
    tags: dict[str, str] = field(default_factory=dict)
    policy: str | None = None  # None: the default key policy
    # Origin EXTERNAL: pending import parameters by token id, and what was imported.
    import_parameters: dict[str, ImportParameters] = field(default_factory=dict, repr=False)
    imported_digest: str | None = None  # SHA-256 of the material: re-imports must match it
    expiration_model: str | None = None
    valid_to: float | None = None
    grants: list[Grant] = field(default_factory=list)
    # GetKeyLastUsage: Operation, Timestamp, KmsRequestId, CloudTrailEventId of the last use.
    last_usage: dict[str, Any] | None = None
    material: str | None = field(default=None, repr=False)  # databases before rotation

    def __post_init__(self) -> None:
        self.origin = Origin(self.origin)
        self.state = KeyState(self.state)
        self.rotations = [r if isinstance(r, Rotation) else Rotation(**r) for r in self.rotations]
        self.grants = [g if isinstance(g, Grant) else Grant(**g) for g in self.grants]
        self.import_parameters = {
            token: p if isinstance(p, ImportParameters) else ImportParameters(**p)
            for token, p in self.import_parameters.items()
        }
        if self.material is not None:  # one material, named by a digest of the key id
            legacy_id = hashlib.sha256(self.id.encode()).hexdigest()
            self.materials.setdefault(legacy_id, self.material)
            self.current_material = self.current_material or legacy_id
            self.material = None


@dataclass
class Alias:
    name: str
    key_id: str
    created: float = 0.0
    updated: float = 0.0


class State:
    def __init__(self, path: Path | None) -> None:
        self._db = sqlite3.connect(str(path) if path else ":memory:", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self.key_stores: dict[str, KeyStore] = {
            row.id: row for row in self._load("key_stores", KeyStore)
        }
        # By ARN: the replicas of a multi-Region key share its id, one per region.
        self.keys: dict[str, Key] = {row.arn: row for row in self._load("keys", Key)}
        self.aliases: dict[tuple[str, str], Alias] = {}
        for region, name, doc in self._db.execute(
            "SELECT region, name, doc FROM regional_aliases"
        ).fetchall():
            self.aliases[(region, name)] = Alias(**json.loads(doc))
        self._upgrade()

    def _upgrade(self) -> None:
        """Give resources from databases written before regions the region of their keys, and
        key rows stored under their key id (before multi-Region replicas) their ARN."""
        for row_id, _ in self._db.execute("SELECT id, doc FROM keys").fetchall():
            if not row_id.startswith("arn:"):
                self._db.execute("DELETE FROM keys WHERE id = ?", (row_id,))
                self.save_key(next(k for k in self.keys.values() if k.id == row_id))
        for store in self.key_stores.values():
            if not store.region:
                regions = {k.region for k in self.keys.values() if k.key_store_id == store.id}
                store.region = min(regions) if regions else DEFAULT_REGION
                self.save_key_store(store)
        if self._db.execute(_LEGACY_ALIASES).fetchone():
            for name, key_id in self._db.execute("SELECT name, key_id FROM aliases").fetchall():
                key = next((k for k in self.keys.values() if k.id == key_id), None)
                self.save_alias(key.region if key else DEFAULT_REGION, Alias(name, key_id))
            self._db.execute("DROP TABLE aliases")

    def _load(self, table: str, kind: Any) -> list[Any]:
        rows = self._db.execute(f"SELECT doc FROM {table}").fetchall()  # noqa: S608
        return [kind(**json.loads(doc)) for (doc,) in rows]

    def save_key_store(self, store: KeyStore) -> None:
        self.key_stores[store.id] = store
        self._db.execute("INSERT OR REPLACE INTO key_stores VALUES (?, ?)",
                         (store.id, json.dumps(asdict(store))))  # fmt: skip

    def delete_key_store(self, store_id: str) -> None:
        self.key_stores.pop(store_id, None)
        self._db.execute("DELETE FROM key_stores WHERE id = ?", (store_id,))

    def save_key(self, key: Key) -> None:
        self.keys[key.arn] = key
        self._db.execute("INSERT OR REPLACE INTO keys VALUES (?, ?)",
                         (key.arn, json.dumps(asdict(key))))  # fmt: skip

    def delete_key(self, arn: str) -> None:
        self.keys.pop(arn, None)
        self._db.execute("DELETE FROM keys WHERE id = ?", (arn,))

    def save_alias(self, region: str, alias: Alias) -> None:
        self.aliases[(region, alias.name)] = alias
        self._db.execute("INSERT OR REPLACE INTO regional_aliases VALUES (?, ?, ?)",
                         (region, alias.name, json.dumps(asdict(alias))))  # fmt: skip

    def delete_alias(self, region: str, name: str) -> None:
        self.aliases.pop((region, name), None)
        self._db.execute(
            "DELETE FROM regional_aliases WHERE region = ? AND name = ?", (region, name)
        )

    def close(self) -> None:
        self._db.close()
