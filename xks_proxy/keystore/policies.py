"""Secondary-authorization policy texts kept in a key store database (``authz_policies``).

A put is one write transaction: it bumps the store's revision like any key change, so every
proxy's ``StoreFollower`` (PostgreSQL NOTIFY, or the once-a-second poll) learns of it, and
stamps that revision on the row, so a proxy re-reads only a policy that changed since the one
it has. The text is stored as given; callers validate it first (``authz/stored.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from xks_proxy.keystore.connections import StoreConnection
from xks_proxy.keystore.store import KeyDatabase


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    key_store: str
    text: str
    revision: int
    updated_at: str
    updated_by: str


class PolicyRows:
    def __init__(self, database: KeyDatabase) -> None:
        self._database = database

    def get(self, key_store: str, newer_than: int = -1) -> StoredPolicy | None:
        """The key store's policy, or None when there is none newer than ``newer_than``."""
        rows = self._database.read(
            "SELECT policy, revision, updated_at, updated_by FROM authz_policies "
            "WHERE key_store = ? AND revision > ?",
            (key_store, newer_than),
        )
        if not rows:
            return None
        text, revision, updated_at, updated_by = rows[0]
        return StoredPolicy(key_store, text, int(revision), updated_at, updated_by)

    def put(self, key_store: str, text: str, actor: str) -> int:
        """Store ``text`` as the key store's policy; returns the revision that wrote it."""
        now = datetime.now(UTC).isoformat(timespec="seconds")

        def put(db: StoreConnection, revision: int) -> int:
            db.query("DELETE FROM authz_policies WHERE key_store = ?", (key_store,))
            db.query(
                "INSERT INTO authz_policies (key_store, policy, revision, updated_at, updated_by)"
                " VALUES (?, ?, ?, ?, ?)",
                (key_store, text, revision, now, actor[:200]),
            )
            return revision

        return self._database.write_transaction(put)
