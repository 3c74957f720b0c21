"""The emulator's state in SQLite: key stores, keys (with their inner-layer material) and
aliases, so keys and ciphertexts survive a restart. It is a development tool: the material is
stored as is, not wrapped."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS key_stores (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS aliases (name TEXT PRIMARY KEY, key_id TEXT NOT NULL);
"""


@dataclass
class KeyStore:
    id: str
    name: str
    endpoint: str
    uri_path: str
    access_key_id: str
    secret: str = field(repr=False)
    connectivity: str = "PUBLIC_ENDPOINT"
    state: str = "DISCONNECTED"
    error_code: str | None = None
    created: float = 0.0


@dataclass
class Key:
    id: str
    arn: str
    account: str
    region: str
    origin: str
    material: str = field(repr=False)  # Base64 of the inner-layer AES-256 key
    description: str = ""
    state: str = "Enabled"
    created: float = 0.0
    key_store_id: str | None = None
    xks_key_id: str | None = None
    deletion_date: float | None = None
    pending_window_days: int | None = None
    rotation_enabled: bool = False


class State:
    def __init__(self, path: Path | None) -> None:
        self._db = sqlite3.connect(str(path) if path else ":memory:", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self.key_stores: dict[str, KeyStore] = {
            row.id: row for row in self._load("key_stores", KeyStore)
        }
        self.keys: dict[str, Key] = {row.id: row for row in self._load("keys", Key)}
        self.aliases: dict[str, str] = dict(
            self._db.execute("SELECT name, key_id FROM aliases").fetchall()
        )

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
        self.keys[key.id] = key
        self._db.execute("INSERT OR REPLACE INTO keys VALUES (?, ?)",
                         (key.id, json.dumps(asdict(key))))  # fmt: skip

    def set_alias(self, name: str, key_id: str) -> None:
        self.aliases[name] = key_id
        self._db.execute("INSERT OR REPLACE INTO aliases VALUES (?, ?)", (name, key_id))

    def delete_alias(self, name: str) -> None:
        self.aliases.pop(name, None)
        self._db.execute("DELETE FROM aliases WHERE name = ?", (name,))

    def close(self) -> None:
        self._db.close()
