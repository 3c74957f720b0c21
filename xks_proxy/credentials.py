"""SigV4 credentials: generation, and the JSON credentials file the CLI manages.

Generation follows xks-spec §6.2: access key ids are 26 random characters of the Base32 alphabet
(``[A-Z2-7]{20,30}``), secrets the standard Base64 of 32 random bytes (44 characters, 256 bits of
entropy), both from ``secrets``. The file is written atomically (temporary file, fsync, rename)
and created 0600, since it holds secrets.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from xks_proxy.sigv4 import Credential

BASE32_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
ACCESS_KEY_ID_LENGTH = 26
FILE_VERSION = 1


def generate_credential() -> Credential:
    access_key_id = "".join(secrets.choice(BASE32_ALPHABET) for _ in range(ACCESS_KEY_ID_LENGTH))
    secret = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
    return Credential(access_key_id, secret)


@dataclass(frozen=True, slots=True)
class CredentialEntry:
    key_store: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    created_at: str = ""

    @property
    def credential(self) -> Credential:
        return Credential(self.access_key_id, self.secret_access_key)


def write_private_file(path: Path, content: str, mode: int = 0o600) -> None:
    """Atomically replace ``path`` with ``content``, readable by the owner only (or ``mode``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except OSError as error:
        os.unlink(temporary)
        # A failed write(2) names no file; the operator needs to know which one (a full disk).
        raise OSError(error.errno, error.strerror, str(path)) from None
    except BaseException:
        os.unlink(temporary)
        raise


class CredentialsFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[CredentialEntry]:
        if not self.path.exists():
            return []
        document = json.loads(self.path.read_text())
        return [CredentialEntry(**entry) for entry in document["credentials"]]

    def _write(self, entries: list[CredentialEntry]) -> None:
        document = {"version": FILE_VERSION, "credentials": [asdict(e) for e in entries]}
        write_private_file(self.path, json.dumps(document, indent=2) + "\n")

    def add(self, key_store: str, credential: Credential) -> CredentialEntry:
        entry = CredentialEntry(
            key_store=key_store,
            access_key_id=credential.access_key_id,
            secret_access_key=credential.secret_access_key,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        self._write([*self.entries(), entry])
        return entry

    def remove(self, access_key_id: str) -> CredentialEntry | None:
        entries = self.entries()
        kept = [e for e in entries if e.access_key_id != access_key_id]
        if len(kept) == len(entries):
            return None
        self._write(kept)
        return next(e for e in entries if e.access_key_id == access_key_id)
