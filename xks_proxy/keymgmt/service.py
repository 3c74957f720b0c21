"""The key lifecycle as one service: what the CLI runs now and the admin API will run later.

Each action checks its input, changes the store in one transaction (the store enforces the state
rules atomically: no rotation, enabling or disabling of a key pending deletion, as in KMS), and
writes one audit line with the actor and the outcome, refused or failed actions included.

Scheduled deletion follows KMS: a waiting period of 7 to 30 days (default 30); the key is
DISABLED at once (GetKeyMetadata says DISABLED, Encrypt and Decrypt answer
InvalidStateException); cancelling leaves it DISABLED; after the date, the proxies' sweeper
purges it for good and its id is never reused.

The service runs over a software key store or over the token of a PKCS#11 backend
(``keymgmt.hsm.TokenKeys``): for HSM keys it lists keys with their versions and rotates them;
every other action is refused, audited as refused, with what to do instead.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from xks_proxy.keymgmt import byok
from xks_proxy.keymgmt.audit import LifecycleAudit
from xks_proxy.keymgmt.backup import (
    BackupError,
    RestoreResult,
    backed_up_credentials,
    read_backup,
    restore_backup,
    write_backup,
)
from xks_proxy.keymgmt.hsm import HsmKey, TokenKeys
from xks_proxy.keymgmt.limits import (
    DEFAULT_DELETION_DAYS,
    HSM_KEYS_HINT,
    MAX_DELETION_DAYS,
    MIN_DELETION_DAYS,
)
from xks_proxy.keystore.imported import ExpiredImports, ImportedMaterial
from xks_proxy.keystore.records import (
    ORIGIN_EXTERNAL,
    KeyExistsError,
    KeyRecord,
    KeyStateError,
    UnknownKeyError,
)
from xks_proxy.keystore.store import KeyDatabase

T = TypeVar("T")
# Asked for something the store's state does not allow: the audit says "refused", not "failed".
REFUSALS = (KeyExistsError, UnknownKeyError, KeyStateError, ValueError, BackupError)


def key_status(record: KeyRecord | HsmKey) -> str:
    if record.deletion_date is not None:
        return "PENDING_DELETION"
    if not record.versions:
        return "PENDING_IMPORT"  # an external key without material (as KMS's PendingImport)
    return "ENABLED" if record.enabled else "DISABLED"


def describe_key(record: KeyRecord | HsmKey) -> dict[str, Any]:
    """One key as ``keys list --json`` and the admin API show it (never material)."""
    return {
        "keyId": record.key_id,
        "keyUsage": sorted(record.usage),
        "keyStatus": key_status(record),
        "versions": len(record.versions),
        "createdAt": record.created_at,
        "deletionDate": record.deletion_date,
        "origin": record.origin,
        "validTo": record.valid_to,
    }


class KeyManager:
    def __init__(
        self, database: KeyDatabase | TokenKeys, audit: LifecycleAudit, actor: str
    ) -> None:
        self._keys = database
        self._audit = audit
        self._actor = actor

    @property
    def _database(self) -> KeyDatabase:
        """The software key store, for the actions only it has (read inside ``_audited``, so
        that the refusal for an HSM key is audited too)."""
        if isinstance(self._keys, TokenKeys):
            raise KeyStateError(f"not available for HSM keys: {HSM_KEYS_HINT}")
        return self._keys

    def _audited(self, action: str, key_id: str | None, run: Callable[[], T], detail: str) -> T:
        try:
            result = run()
        except Exception as error:
            self._audit.record(
                actor=self._actor, action=action, key_id=key_id,
                outcome="refused" if isinstance(error, REFUSALS) else "failed",
                detail=f"{type(error).__name__}: {error}"[:300],
            )  # fmt: skip
            raise
        self._audit.record(
            actor=self._actor, action=action, key_id=key_id, outcome="success", detail=detail
        )
        return result

    def keys(self) -> list[KeyRecord | HsmKey]:
        """Every customer key, sorted by id, still sealed (HSM keys: with their versions)."""
        records: list[KeyRecord | HsmKey] = []
        if isinstance(self._keys, TokenKeys):
            records.extend(self._keys.records())  # sorted by the token listing
        else:
            records.extend(sorted((r for r in self._keys.records() if not r.internal),
                                  key=lambda r: r.key_id))  # fmt: skip
        return records

    def create(self, key_id: str, usage: frozenset[str]) -> None:
        detail = f"usage {','.join(sorted(usage)) or 'NONE'}"
        self._audited("create", key_id, lambda: self._database.create_key(key_id, usage), detail)

    def create_external(self, key_id: str, usage: frozenset[str]) -> None:
        """A key without material (DISABLED) until ``import_material`` (see ``byok``)."""
        detail = f"usage {','.join(sorted(usage)) or 'NONE'}, origin external, no material yet"
        self._audited(
            "create", key_id,
            lambda: self._database.create_key(key_id, usage, origin=ORIGIN_EXTERNAL), detail,
        )  # fmt: skip

    def import_parameters(
        self, key_id: str, algorithm: str, spec: str, now: datetime | None = None
    ) -> byok.ImportParameters:
        """A wrapping public key and an import token for ``key_id`` (``byok``)."""
        when = now or datetime.now(UTC)
        # Expired wrapping keys go now even where no proxy sweeps (a CLI-only host), audited.
        self.expire_imports()
        return self._audited(
            "import-parameters", key_id,
            lambda: byok.import_parameters(self._database, key_id, algorithm, spec, when),
            f"{algorithm} with {spec}; token expires {(when + byok.TOKEN_LIFETIME).isoformat()}",
        )  # fmt: skip

    def import_material(
        self, key_id: str, wrapped: bytes, token: str, valid_to: datetime | None = None
    ) -> None:
        """Unwrap and install imported material (``byok``); never logs the material."""
        expiry = f"valid to {valid_to.isoformat()}" if valid_to else "no expiry"
        self._audited(
            "import", key_id,
            lambda: byok.import_material(
                self._database, key_id, wrapped, token, valid_to, datetime.now(UTC)
            ),
            expiry,
        )  # fmt: skip

    def delete_material(self, key_id: str) -> None:
        self._audited(
            "delete-material", key_id,
            lambda: ImportedMaterial(self._database).delete_material(key_id),
            "imported material deleted; the key stays, DISABLED, until the same is imported",
        )  # fmt: skip

    def enable(self, key_id: str) -> None:
        self._audited("enable", key_id, lambda: self._database.set_enabled(key_id, True), "")

    def disable(self, key_id: str) -> None:
        self._audited("disable", key_id, lambda: self._database.set_enabled(key_id, False), "")

    def rotate(self, key_id: str) -> int:
        """Add a version; new encryptions use it, older versions still decrypt."""
        return self._audited("rotate", key_id, lambda: self._keys.rotate_key(key_id), "")

    def schedule_deletion(
        self, key_id: str, days: int = DEFAULT_DELETION_DAYS, now: datetime | None = None
    ) -> datetime:
        """Returns the deletion date; raises ``ValueError`` for a window outside 7..30 days."""
        when = (now or datetime.now(UTC)) + timedelta(days=days)

        def schedule() -> datetime:
            if not MIN_DELETION_DAYS <= days <= MAX_DELETION_DAYS:
                raise ValueError(
                    f"the waiting period is {MIN_DELETION_DAYS} to {MAX_DELETION_DAYS} days"
                )
            self._database.schedule_deletion(key_id, when)
            return when

        return self._audited(
            "schedule-deletion", key_id, schedule, f"deletion date {when.isoformat()}"
        )

    def cancel_deletion(self, key_id: str) -> None:
        self._audited(
            "cancel-deletion", key_id, lambda: self._database.cancel_deletion(key_id),
            "the key stays DISABLED",
        )  # fmt: skip

    def backup(self, passphrase: str) -> tuple[str, int, int]:
        """A backup document of every customer key and stored credential (see ``backup``), and
        how many keys and credentials it holds."""

        def back_up() -> tuple[str, int, int]:
            keys = [k for k in self._database.load() if not k.internal]
            credentials = backed_up_credentials(self._database)
            return write_backup(keys, passphrase, credentials), len(keys), len(credentials)

        return self._audited(
            "backup", None, back_up, "every customer key, all versions, and stored credentials"
        )

    def restore(self, document: str, passphrase: str) -> RestoreResult:
        def restore() -> RestoreResult:
            return restore_backup(self._database, read_backup(document, passphrase))

        return self._audited("restore", None, restore, "from a passphrase-sealed backup")

    def sweep(self, now: datetime | None = None) -> tuple[list[str], ExpiredImports]:
        """What every proxy's sweeper does: purge the keys whose deletion date has passed, and
        delete expired wrapping keys and imported material past ``valid_to``. Each deletion is
        one audit line, written by the one sweeper whose transaction made it (the store
        serialises writers), so several proxies sweeping at once write it exactly once."""
        when = now or datetime.now(UTC)
        return self.purge_due(when), self.expire_imports(when)

    def purge_due(self, now: datetime | None = None) -> list[str]:
        """Purge the keys whose deletion date has passed."""
        purged = self._database.purge_due(now or datetime.now(UTC))
        for key_id in purged:
            self._audit.record(
                actor=self._actor, action="purge", key_id=key_id, outcome="success",
                detail="deletion date passed; material destroyed",
            )  # fmt: skip
        return purged

    def expire_imports(self, now: datetime | None = None) -> ExpiredImports:
        """Delete expired wrapping keys and imported material past its ``valid_to``."""
        expired = ImportedMaterial(self._database).expire(now or datetime.now(UTC))
        for key_id in expired.material:
            self._audit.record(
                actor=self._actor, action="expire-material", key_id=key_id, outcome="success",
                detail="--valid-to passed; imported material deleted (import it again to use "
                "the key)",
            )  # fmt: skip
        for key_id in expired.wrapping_keys:
            self._audit.record(
                actor=self._actor, action="expire-import-parameters", key_id=key_id,
                outcome="success", detail="import token expired unused; wrapping key destroyed",
            )  # fmt: skip
        return expired
