"""Imported key material (BYOK) in the key store: the rows ``keymgmt.byok`` reads and writes.

``import_secrets`` holds store secrets sealed under the KEK (``KeySealer.seal_secret``): the
store's Ed25519 token-signing key (no expiry) and each pending RSA wrapping key (bound to one key
id, expiring with its import token). A wrapping key is deleted in the transaction that imports
with it, so a token works once; ``expire`` deletes the ones past their date and the material
of keys past their ``valid_to`` (every proxy's sweeper runs it; the proxies refuse such a key
from the instant itself, see ``backends.software``).

Every change runs in one write transaction that checks the key's state, so two hosts importing
at once cannot both consume a token or install different material.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

from xks_proxy.keystore.connections import Row, StoreConnection
from xks_proxy.keystore.records import (
    ORIGIN_EXTERNAL,
    KeyStateError,
    SealedVersion,
    UnknownKeyError,
)
from xks_proxy.keystore.store import KeyDatabase

SIGNING_KEY_NAME = "token-signing-key"


class ExpiredImports(NamedTuple):
    """What one ``expire`` deleted: keys whose material passed ``valid_to``, and the key ids
    of wrapping keys (with their import tokens) that expired unused."""

    material: list[str]
    wrapping_keys: list[str]


Query = Callable[[str, tuple[object, ...]], list[Row]]


def iso(when: datetime) -> str:
    """The one timestamp format of the store: comparable as text."""
    return when.astimezone(UTC).isoformat(timespec="seconds")


class ImportedMaterial:
    def __init__(self, database: KeyDatabase) -> None:
        self._database = database

    def check_external(self, key_id: str) -> None:
        """Refuse a key that does not exist, was not created external, or is pending deletion."""
        _external(self._database.read, key_id)

    def secret(self, name: str) -> tuple[str | None, bytes, str | None] | None:
        """(key id, unsealed secret, expiry) of a store secret, or None."""
        rows = self._database.read(
            "SELECT key_id, nonce, sealed, expires_at FROM import_secrets WHERE name = ?", (name,)
        )
        if not rows:
            return None
        key_id, nonce, sealed, expires_at = rows[0]
        secret = self._database.sealer.unseal_secret(name, SealedVersion(nonce, sealed))
        return key_id, secret, expires_at

    def add_secret(
        self, name: str, secret: bytes, *, key_id: str | None = None, expires_at: str | None = None
    ) -> bytes:
        """Store ``secret`` unless ``name`` is taken; returns the one stored (first writer wins,
        so two hosts making the signing key at once agree on one)."""
        sealed = self._database.sealer.seal_secret(name, secret)

        def add(db: StoreConnection, revision: int) -> SealedVersion:
            rows = db.query("SELECT nonce, sealed FROM import_secrets WHERE name = ?", (name,))
            if rows:
                return SealedVersion(rows[0][0], rows[0][1])
            db.query(
                "INSERT INTO import_secrets (name, key_id, nonce, sealed, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (name, key_id, sealed.nonce, sealed.sealed, expires_at),
            )
            return sealed

        stored = self._database.write_transaction(add)
        return self._database.sealer.unseal_secret(name, stored)

    def install(
        self,
        key_id: str,
        wrapping_key_name: str,
        material: bytes,
        fingerprint: str,
        valid_to: str | None,
        now: datetime,
    ) -> None:
        """Make ``material`` the key's version 1 and consume the wrapping key, all or nothing."""
        sealed = self._database.sealer.seal(key_id, 1, material)

        def install(db: StoreConnection, revision: int) -> None:
            known = _external(db.query, key_id)
            if known is not None and known != fingerprint:
                raise KeyStateError(
                    f"key {key_id} had other key material before: only the same material can "
                    "be imported again (as in AWS KMS)"
                )
            if not db.query(
                "DELETE FROM import_secrets WHERE name = ? AND key_id = ? AND expires_at > ? "
                "RETURNING name",
                (wrapping_key_name, key_id, iso(now)),
            ):
                raise KeyStateError(
                    "the import token was used already or has expired: run "
                    "`keys import-parameters` again"
                )
            db.query("DELETE FROM key_versions WHERE key_id = ?", (key_id,))
            self._database.insert_version(key_id, 1, sealed)
            db.query(
                "UPDATE keys SET material_fingerprint = ?, valid_to = ?, revision = ? "
                "WHERE key_id = ?",
                (fingerprint, valid_to, revision, key_id),
            )

        self._database.write_transaction(install)

    def delete_material(self, key_id: str) -> None:
        def delete(db: StoreConnection, revision: int) -> None:
            _external(db.query, key_id, pending_ok=True)
            if not db.query(
                "DELETE FROM key_versions WHERE key_id = ? RETURNING version", (key_id,)
            ):
                raise KeyStateError(f"key {key_id} has no key material to delete")
            db.query(
                "UPDATE keys SET valid_to = NULL, revision = ? WHERE key_id = ?",
                (revision, key_id),
            )

        self._database.write_transaction(delete)

    def expire(self, now: datetime) -> ExpiredImports:
        """Delete expired wrapping keys, and the material of keys past ``valid_to``; says what
        this call deleted (several proxies may sweep at once: writers serialise, so each row is
        deleted, and reported, by exactly one of them)."""
        when = iso(now)
        due_secrets = "SELECT name, key_id FROM import_secrets WHERE expires_at <= ?"
        due_keys = (
            "SELECT k.key_id FROM keys k WHERE k.valid_to IS NOT NULL AND k.valid_to <= ? "
            "AND EXISTS (SELECT 1 FROM key_versions v WHERE v.key_id = k.key_id)"
        )
        if not (
            self._database.read(due_secrets, (when,)) or self._database.read(due_keys, (when,))
        ):
            return ExpiredImports([], [])  # the common case: two reads, no revision

        def expire(db: StoreConnection, revision: int) -> ExpiredImports:
            wrapping = [row[1] for row in db.query(due_secrets, (when,))]
            db.query("DELETE FROM import_secrets WHERE expires_at <= ?", (when,))
            expired = [row[0] for row in db.query(due_keys, (when,))]
            for key_id in expired:
                db.query("DELETE FROM key_versions WHERE key_id = ?", (key_id,))
                db.query("UPDATE keys SET revision = ? WHERE key_id = ?", (revision, key_id))
            return ExpiredImports(expired, wrapping)

        return self._database.write_transaction(expire)


def _external(query: Query, key_id: str, *, pending_ok: bool = False) -> str | None:
    """The key's material fingerprint; refuses a key that cannot take imported material."""
    rows = query(
        "SELECT origin, deletion_date, material_fingerprint FROM keys "
        "WHERE key_id = ? AND internal = 0",
        (key_id,),
    )
    if not rows:
        raise UnknownKeyError(key_id)
    origin, deletion_date, fingerprint = rows[0]
    if origin != ORIGIN_EXTERNAL:
        raise KeyStateError(
            f"key {key_id} was made with its own material; only a key created with "
            "--origin external takes imported material"
        )
    if deletion_date is not None and not pending_ok:
        raise KeyStateError(
            f"key {key_id} is pending deletion on {deletion_date}; cancel the deletion first"
        )
    fingerprint_text: str | None = fingerprint
    return fingerprint_text
