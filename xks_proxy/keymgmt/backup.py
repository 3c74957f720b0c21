"""Backups of a key store under a passphrase: the failsafe copy that outlives the host and the KEK.

In an external key store a lost key is every ciphertext under it, forever; a backup holds every
customer key (all versions, usage, state, deletion date) and is independent of the KEK, so it
restores into a store under any KEK.

File format, version 1 (a JSON document, written 0600 and atomically):

    {"format": "xks-proxy-key-backup", "version": 1,
     "kdf": {"name": "scrypt", "salt": B64, "n": 32768, "r": 8, "p": 1},
     "cipher": "AES-256-GCM", "nonce": B64, "ciphertext": B64}

The key is scrypt(passphrase, salt, n, r, p) → 32 bytes; ``ciphertext`` is AES-256-GCM of the
payload under it, with the AAD ``xks-proxy-key-backup 1`` followed by the canonical JSON of
``kdf`` (so the parameters cannot be swapped). The payload is UTF-8 JSON:

    {"createdAt": ISO8601, "keys": [{"keyId", "usage": [...], "enabled", "createdAt",
      "deletionDate": ISO8601|null, "versions": [{"version": 1, "material": B64}, ...]}]}

Restore goes into an empty store or the same one: a key the store has with the same material is
left alone; a key id the store has with other material is refused (nothing is written); missing
keys are sealed under the store's KEK and written in one transaction.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from xks_proxy.keystore.records import ORIGIN_PROXY, KeyRecord, StoredKey
from xks_proxy.keystore.store import KeyDatabase

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
class RestoreResult:
    restored: list[str]
    already_present: list[str]


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


def write_backup(keys: list[StoredKey], passphrase: str) -> str:
    """The backup document of these keys (unsealed customer keys) as JSON text."""
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


def read_backup(text: str, passphrase: str) -> list[StoredKey]:
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
    return [
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


def restore_keys(database: KeyDatabase, keys: list[StoredKey]) -> RestoreResult:
    """Write the keys the store lacks; refuse (writing nothing) a key id with other material."""
    present = {key.key_id: key for key in database.load() if not key.internal}
    missing: list[KeyRecord] = []
    same: list[str] = []
    for key in keys:
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
    database.copy_records(missing)
    return RestoreResult([record.key_id for record in missing], same)


def _sealed(database: KeyDatabase, key: StoredKey) -> KeyRecord:
    return KeyRecord(
        key.key_id, key.usage, key.enabled, False, key.created_at,
        {v: database.sealer.seal(key.key_id, v, m) for v, m in key.versions.items()},
        key.deletion_date, key.origin, key.valid_to, key.material_fingerprint,
    )  # fmt: skip
