"""SigV4 credentials kept in the key store (``credentials_store = "database"``), for a fleet.

A key store whose credentials live here shares them with every proxy that opens the same store:
``xks-proxy credentials create|add|revoke`` on one host writes one row, in one write transaction
that bumps the store's revision (and NOTIFYs, on PostgreSQL), so every proxy's ``StoreFollower``
picks the change up within a second, as it does for keys. Proxies hold the unsealed secrets in
memory; with the database gone they go on verifying with what they have.

A secret is sealed under the store's KEK like key material, bound to ``credential <key store>
<access key id>`` so a row copied to another key store or id does not unseal. Revoking erases the
secret and keeps the row (its revision tells the followers); adding the same id again revives it.
Rules checked inside the write transaction, so two hosts racing cannot break them: an access key
id names one secret in the whole store (xks-spec §6.2), and a key store's last credential is
revoked only when forced.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from xks_proxy.errors import CommandError
from xks_proxy.keystore.connections import Row, StoreConnection
from xks_proxy.keystore.records import SealedVersion, StoredCredential
from xks_proxy.keystore.sealing import KeySealer
from xks_proxy.sigv4 import Credential

if TYPE_CHECKING:
    from xks_proxy.keystore.store import KeyDatabase  # which reads credentials with this module

_LIVE = (
    "SELECT key_store, access_key_id, nonce, sealed, created_at FROM credentials "
    "WHERE revoked_at IS NULL"
)
_IDS_OF_STORE = "SELECT access_key_id FROM credentials WHERE key_store = ? AND revoked_at IS NULL"


def secret_name(key_store: str, access_key_id: str) -> str:
    """What a stored secret is bound to (AAD of its seal)."""
    return f"credential {key_store} {access_key_id}"


def stored_credentials(rows: list[Row]) -> list[StoredCredential]:
    return [
        StoredCredential(key_store, access_key_id, SealedVersion(nonce, sealed), created_at)
        for key_store, access_key_id, nonce, sealed, created_at in rows
    ]


def read_live(db: StoreConnection) -> list[StoredCredential]:
    """Every credential not revoked; inside the caller's transaction (``changes_since``)."""
    return stored_credentials(db.query(_LIVE + " ORDER BY created_at, access_key_id"))


def unseal_credential(sealer: KeySealer, stored: StoredCredential) -> Credential:
    name = secret_name(stored.key_store, stored.access_key_id)
    return Credential(stored.access_key_id, sealer.unseal_secret(name, stored.secret).decode())


def insert_credential(db: StoreConnection, stored: StoredCredential, revision: int) -> None:
    """One sealed credential row; inside the caller's write transaction."""
    db.query(
        "INSERT INTO credentials (access_key_id, key_store, nonce, sealed, created_at,"
        " revoked_at, revision) VALUES (?, ?, ?, ?, ?, NULL, ?)",
        (stored.access_key_id, stored.key_store, stored.secret.nonce, stored.secret.sealed,
         stored.created_at, revision),
    )  # fmt: skip


class CredentialTable:
    """The credentials of one store, for the commands and the admin API."""

    def __init__(self, database: KeyDatabase) -> None:
        self._database = database

    @property
    def sealer(self) -> KeySealer:
        return self._database.sealer

    def all_live(self) -> list[StoredCredential]:
        """Every key store's credentials, sealed (``keys migrate`` copies them as they are)."""
        return stored_credentials(self._database.read(_LIVE + " ORDER BY access_key_id"))

    def revoked_ids(self) -> set[str]:
        """Access key ids revoked in this store (their rows stay, without a secret)."""
        rows = self._database.read(
            "SELECT access_key_id FROM credentials WHERE revoked_at IS NOT NULL"
        )
        return {row[0] for row in rows}

    def live(self, key_store: str) -> list[StoredCredential]:
        rows = self._database.read(
            _LIVE + " AND key_store = ? ORDER BY created_at, access_key_id", (key_store,)
        )
        return stored_credentials(rows)

    def add(self, key_store: str, credential: Credential) -> bool:
        """Store ``credential``; False when the key store has it already (same secret)."""
        sealer = self._database.sealer
        name = secret_name(key_store, credential.access_key_id)
        sealed = sealer.seal_secret(name, credential.secret_access_key.encode())

        def add(db: StoreConnection, revision: int) -> bool:
            rows = db.query(
                "SELECT key_store, nonce, sealed, revoked_at FROM credentials "
                "WHERE access_key_id = ?",
                (credential.access_key_id,),
            )
            if rows and rows[0][3] is None:
                owner, nonce, secret = rows[0][0], rows[0][1], rows[0][2]
                same = owner == key_store and (
                    sealer.unseal_secret(name, SealedVersion(nonce, secret))
                    == credential.secret_access_key.encode()
                )
                if same:
                    return False
                # XKS spec §6.2: an access key id identifies exactly one secret.
                raise CommandError(
                    f"access key id {credential.access_key_id} is already in use by key store "
                    f"{owner} with another secret"
                )
            db.query("DELETE FROM credentials WHERE access_key_id = ?", (credential.access_key_id,))
            stored = StoredCredential(key_store, credential.access_key_id, sealed, _now())
            insert_credential(db, stored, revision)
            return True

        return self._database.write_transaction(add)

    def revoke(self, key_store: str, access_key_id: str, *, others: int, force: bool) -> None:
        """Erase the credential; ``others`` counts the key store's credentials kept elsewhere
        (inline in the configuration), which keep it serving."""

        def revoke(db: StoreConnection, revision: int) -> None:
            ids = [row[0] for row in db.query(_IDS_OF_STORE, (key_store,))]
            if access_key_id not in ids:
                raise CommandError(f"key store {key_store} has no credential {access_key_id}")
            if len(ids) + others == 1 and not force:
                raise CommandError(
                    f"{access_key_id} is the last credential of key store {key_store}: without "
                    "it every request is refused (add the new one first, or force)"
                )
            db.query(
                "UPDATE credentials SET nonce = NULL, sealed = NULL, revoked_at = ?, revision = ?"
                " WHERE access_key_id = ?",
                (_now(), revision, access_key_id),
            )

        self._database.write_transaction(revoke)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
