"""What a key store holds, as plain values shared by the stores, the backend and the CLI."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from xks_proxy.backends.base import DECRYPT, ENCRYPT

HEALTH_KEY_ID = "xks-proxy-internal-health-key"
VALID_USAGES = frozenset({ENCRYPT, DECRYPT})


@dataclass(frozen=True, slots=True)
class SealedVersion:
    """One key version's material, AES-GCM sealed under the KEK (see ``sealing``)."""

    nonce: bytes
    sealed: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One key as stored; its versions stay sealed until someone needs the material."""

    key_id: str
    usage: frozenset[str]
    enabled: bool
    internal: bool
    created_at: str
    versions: Mapping[int, SealedVersion] = field(repr=False)

    @property
    def newest_version(self) -> int:
        return max(self.versions)


@dataclass(frozen=True, slots=True)
class StoredKey:
    """One key with its versions' material unsealed (the CLI's and check-config's view)."""

    key_id: str
    usage: frozenset[str]
    enabled: bool
    internal: bool
    created_at: str
    versions: dict[int, bytes] = field(repr=False)

    @property
    def newest_version(self) -> int:
        return max(self.versions)


@dataclass(frozen=True, slots=True)
class StoreChanges:
    """Keys written since a revision, and the store's revision they bring a reader to.

    ``complete``: these are all the keys there are; a reader drops any it has beyond them.
    """

    revision: int
    keys: list[KeyRecord]
    complete: bool


class KeyExistsError(Exception):
    pass


class UnknownKeyError(Exception):
    pass


class StoreUnavailableError(Exception):
    """The store's database cannot be reached now; the message says which and why."""
