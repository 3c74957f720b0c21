"""Backups of a key store under a passphrase: the failsafe copy that outlives the host and the KEK.

In an external key store a lost key is every ciphertext under it, forever; a backup holds every
customer key (all versions, usage, state, deletion date) and the SigV4 credentials kept in the
store (``credentials_store = "database"``), and is independent of the KEK, so it restores into a
store under any KEK. Credentials are in it because a fleet that keeps them in the store has no
other copy: a store rebuilt from a backup without them would hold the keys but refuse every
request from KMS until new credentials were made and entered in the AWS console.

File format, version 1 (a JSON document, written 0600 and atomically):

    {"format": "xks-proxy-key-backup", "version": 1,
     "kdf": {"name": "scrypt", "salt": B64, "n": 32768, "r": 8, "p": 1},
     "cipher": "AES-256-GCM", "nonce": B64, "ciphertext": B64}

The key is scrypt(passphrase, salt, n, r, p) → 32 bytes; ``ciphertext`` is AES-256-GCM of the
payload under it, with the AAD ``xks-proxy-key-backup 1`` followed by the canonical JSON of
``kdf`` (so the parameters cannot be swapped). The payload is UTF-8 JSON:

    {"createdAt": ISO8601, "keys": [{"keyId", "usage": [...], "enabled", "createdAt",
      "deletionDate": ISO8601|null, "versions": [{"version": 1, "material": B64}, ...]}],
     "credentials": [{"keyStore", "accessKeyId", "secretAccessKey", "createdAt"}, ...]}

Secrets (key material, secret access keys) appear only inside ``ciphertext``: like a key
version, a credential leaves the store unsealed from its KEK (proving the KEK opens it) and is
sealed under the passphrase with everything else; nothing in the file is readable without it.
``credentials`` is absent from files written before it existed (read as none): the format
version stays 1, as it did for the imported-material fields.

Restore goes into an empty store or the same one: a key the store has with the same material is
left alone; a key id the store has with other material is refused (nothing is written); missing
keys are sealed under the store's KEK and written in one transaction. Credentials follow the
same rules, with the store's own (xks-spec §6.2: an access key id names one secret): one the
store holds for the same key store with the same secret is left alone; an access key id it holds
with another secret or for another key store is refused, writing nothing; one revoked in the
store since the backup stays revoked (a revocation is deliberate, often a leaked secret, and a
restore must not undo it); the rest are sealed under the store's KEK, bound to key store and
access key id as ``credentials create`` seals them, in the same transaction as the keys.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from xks_proxy.keystore.credentials import CredentialTable, secret_name, unseal_credential
from xks_proxy.keystore.records import ORIGIN_PROXY, KeyRecord, StoredCredential, StoredKey
from xks_proxy.keystore.store import KeyDatabase
from xks_proxy.sigv4 import Credential

FORMAT = "xks-proxy-key-backup"
VERSION = 1
# scrypt at n = 2^15, r = 8: 32 MiB and about a tenth of a second per guess.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
MIN_PASSPHRASE_CHARS = 12


class BackupError(Exception):
    """A backup that cannot be read, or a restore that would overwrite other material."""


@dataclass(frozen=True, slots=True)
class BackedUpCredential:
    """A SigV4 credential the store keeps for a key store, unsealed (``credentials_store``)."""

    key_store: str
    credential: Credential
    created_at: str


@dataclass(frozen=True, slots=True)
class Backup:
    keys: list[StoredKey]
    credentials: list[BackedUpCredential]


@dataclass(frozen=True, slots=True)
class RestoreResult:
    restored: list[str]
    already_present: list[str]
    # Access key ids: written, in the store already with the same secret, revoked there.
    credentials_restored: list[str] = field(default_factory=list)
    credentials_present: list[str] = field(default_factory=list)
    credentials_revoked: list[str] = field(default_factory=list)


def backed_up_credentials(database: KeyDatabase) -> list[BackedUpCredential]:
    """Every live credential of the store, unsealed: ``ConfigError`` for one the KEK does not
    open (the store was altered), as for a key version."""
    return [
        BackedUpCredential(
            stored.key_store, unseal_credential(database.sealer, stored), stored.created_at
        )
        for stored in CredentialTable(database).all_live()
    ]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _derive(passphrase: str, kdf: dict[str, Any]) -> bytes:
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise BackupError(f"the passphrase must have at least {MIN_PASSPHRASE_CHARS} characters")
    scrypt = Scrypt(
        salt=base64.b64decode(kdf["salt"], validate=True), length=32,
        n=int(kdf["n"]), r=int(kdf["r"]), p=int(kdf["p"]),
    )  # fmt: skip
    return scrypt.derive(passphrase.encode())


def _aad(kdf: dict[str, Any]) -> bytes:
    return f"{FORMAT} {VERSION} ".encode() + json.dumps(kdf, sort_keys=True).encode()


def write_backup(
    keys: list[StoredKey], passphrase: str, credentials: list[BackedUpCredential] | None = None
) -> str:
    """The backup document of these keys (unsealed customer keys) and stored credentials as
    JSON text."""
    payload = {
        "createdAt": datetime.now(UTC).isoformat(timespec="seconds"),
        "keys": [
            {
                "keyId": key.key_id,
                "usage": sorted(key.usage),
                "enabled": key.enabled,
                "createdAt": key.created_at,
                "deletionDate": key.deletion_date,
                # Imported material (BYOK): absent in older files of this version (defaults).
                "origin": key.origin,
                "validTo": key.valid_to,
                "materialFingerprint": key.material_fingerprint,
                "versions": [
                    {"version": version, "material": _b64(material)}
                    for version, material in sorted(key.versions.items())
                ],
            }
            for key in keys
        ],
        "credentials": [
            {
                "keyStore": entry.key_store,
                "accessKeyId": entry.credential.access_key_id,
                "secretAccessKey": entry.credential.secret_access_key,
                "createdAt": entry.created_at,
            }
            for entry in credentials or []
        ],
    }
    kdf = {"name": "scrypt", "salt": _b64(os.urandom(16)), "n": SCRYPT_N, "r": SCRYPT_R,
           "p": SCRYPT_P}  # fmt: skip
    nonce = os.urandom(12)
    ciphertext = AESGCM(_derive(passphrase, kdf)).encrypt(
        nonce, json.dumps(payload).encode(), _aad(kdf)
    )
    document = {"format": FORMAT, "version": VERSION, "kdf": kdf, "cipher": "AES-256-GCM",
                "nonce": _b64(nonce), "ciphertext": _b64(ciphertext)}  # fmt: skip
    return json.dumps(document, indent=2) + "\n"


def read_backup(text: str, passphrase: str) -> Backup:
    try:
        document = json.loads(text)
        if document.get("format") != FORMAT or document.get("version") != VERSION:
            raise BackupError(f"not an {FORMAT} of version {VERSION}")
        kdf = document["kdf"]
        key = _derive(passphrase, kdf)
        nonce = base64.b64decode(document["nonce"], validate=True)
        ciphertext = base64.b64decode(document["ciphertext"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise BackupError(f"not a readable key backup ({type(error).__name__})") from None
    try:
        payload = json.loads(AESGCM(key).decrypt(nonce, ciphertext, _aad(kdf)))
    except InvalidTag:
        raise BackupError("wrong passphrase, or the backup was altered") from None
    keys = [
        StoredKey(
            key_id=entry["keyId"],
            usage=frozenset(entry["usage"]),
            enabled=bool(entry["enabled"]),
            internal=False,
            created_at=entry["createdAt"],
            versions={
                int(v["version"]): base64.b64decode(v["material"], validate=True)
                for v in entry["versions"]
            },
            deletion_date=entry["deletionDate"],
            origin=entry.get("origin", ORIGIN_PROXY),
            valid_to=entry.get("validTo"),
            material_fingerprint=entry.get("materialFingerprint"),
        )
        for entry in payload["keys"]
    ]
    credentials = [
        BackedUpCredential(
            entry["keyStore"],
            Credential(entry["accessKeyId"], entry["secretAccessKey"]),
            entry["createdAt"],
        )
        for entry in payload.get("credentials", [])
    ]
    return Backup(keys, credentials)


def restore_backup(database: KeyDatabase, backup: Backup) -> RestoreResult:
    """Write the keys and credentials the store lacks, all in one transaction; refuse (writing
    nothing) a key id with other material or an access key id with another secret."""
    present = {key.key_id: key for key in database.load() if not key.internal}
    missing: list[KeyRecord] = []
    same: list[str] = []
    for key in backup.keys:
        existing = present.get(key.key_id)
        if existing is None:
            missing.append(_sealed(database, key))
        elif existing.versions == key.versions:
            same.append(key.key_id)
        else:
            raise BackupError(
                f"the store's key {key.key_id} has other material than the backup's; "
                "nothing was restored"
            )
    credentials = _credentials_to_restore(database, backup.credentials)
    database.copy_records(missing, credentials.missing)
    return RestoreResult(
        [record.key_id for record in missing], same,
        [stored.access_key_id for stored in credentials.missing], credentials.same,
        credentials.revoked,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class _CredentialsToRestore:
    missing: list[StoredCredential]
    same: list[str]
    revoked: list[str]


def _credentials_to_restore(
    database: KeyDatabase, credentials: list[BackedUpCredential]
) -> _CredentialsToRestore:
    table = CredentialTable(database)
    live = {stored.access_key_id: stored for stored in table.all_live()}
    revoked = table.revoked_ids()
    result = _CredentialsToRestore([], [], [])
    for entry in credentials:
        access_key_id = entry.credential.access_key_id
        existing = live.get(access_key_id)
        if access_key_id in revoked:
            result.revoked.append(access_key_id)
        elif existing is None:
            name = secret_name(entry.key_store, access_key_id)
            secret = entry.credential.secret_access_key.encode()
            sealed = database.sealer.seal_secret(name, secret)
            result.missing.append(
                StoredCredential(entry.key_store, access_key_id, sealed, entry.created_at)
            )
        elif existing.key_store == entry.key_store and (
            unseal_credential(database.sealer, existing) == entry.credential
        ):
            result.same.append(access_key_id)
        else:
            raise BackupError(
                f"the store's credential {access_key_id} has another secret or key store than "
                "the backup's; nothing was restored"
            )
    return result


def _sealed(database: KeyDatabase, key: StoredKey) -> KeyRecord:
    return KeyRecord(
        key.key_id, key.usage, key.enabled, False, key.created_at,
        {v: database.sealer.seal(key.key_id, v, m) for v, m in key.versions.items()},
        key.deletion_date, key.origin, key.valid_to, key.material_fingerprint,
    )  # fmt: skip
