"""What a key store holds, as plain values shared by the stores, the backend and the CLI."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from xks_proxy.backends.base import DECRYPT, ENCRYPT
from xks_proxy.errors import ConfigError

HEALTH_KEY_ID = "xks-proxy-internal-health-key"
ORIGIN_PROXY = "proxy"
ORIGIN_EXTERNAL = "external"
VALID_USAGES = frozenset({ENCRYPT, DECRYPT})


# Named tuples, not frozen dataclasses: a proxy builds one of each per key at start-up, and at
# 100,000 keys a tuple's construction (and size) is what keeps start-up fast and memory small.
class SealedVersion(NamedTuple):
    """One key version's material, AES-GCM sealed under the KEK (see ``sealing``)."""

    nonce: bytes
    sealed: bytes

    def __repr__(self) -> str:
        return f"SealedVersion(nonce={self.nonce.hex()})"


class KeyRecord(NamedTuple):
    """One key as stored; its versions stay sealed until someone needs the material."""

    key_id: str
    usage: frozenset[str]
    enabled: bool
    internal: bool
    created_at: str
    versions: Mapping[int, SealedVersion]
    # When the sweeper purges the key (ISO 8601, UTC); None unless deletion is scheduled.
    deletion_date: str | None = None
    # 'proxy' (material made here) or 'external' (imported; see ``keymgmt.byok``).
    origin: str = "proxy"
    # Imported material is unusable from this instant on (ISO 8601, UTC); None: no expiry.
    valid_to: str | None = None
    # SHA-256 fingerprint of imported material (``keymgmt.byok``): re-import must match it.
    material_fingerprint: str | None = None

    @property
    def newest_version(self) -> int:
        """0 for a key without material (external, before import or after deletion)."""
        return max(self.versions, default=0)


class StoredCredential(NamedTuple):
    """A key store's SigV4 credential kept in the store (``keystore.credentials``), sealed."""

    key_store: str
    access_key_id: str
    secret: SealedVersion
    created_at: str


@dataclass(frozen=True, slots=True)
class StoredKey:
    """One key with its versions' material unsealed (the CLI's and check-config's view)."""

    key_id: str
    usage: frozenset[str]
    enabled: bool
    internal: bool
    created_at: str
    versions: dict[int, bytes] = field(repr=False)
    deletion_date: str | None = None
    origin: str = ORIGIN_PROXY
    valid_to: str | None = None
    material_fingerprint: str | None = None

    @property
    def newest_version(self) -> int:
        return max(self.versions)


@dataclass(frozen=True, slots=True)
class StoreChanges:
    """Keys written since a revision, and the store's revision they bring a reader to.

    ``complete``: these are all the keys there are; a reader drops any it has beyond them.
    ``deleted``: keys purged since (apply before ``keys``: a key may be made again after).
    ``credentials``: every live stored credential when any was written since, else None.
    """

    revision: int
    keys: list[KeyRecord]
    complete: bool
    deleted: list[str] = field(default_factory=list)
    credentials: list[StoredCredential] | None = None


class KeyExistsError(Exception):
    pass


class UnknownKeyError(Exception):
    pass


class KeyStateError(Exception):
    """The key exists, but its state forbids the change (e.g. it is pending deletion)."""


class KeyStoreUnavailableError(ConfigError):
    """The store's database cannot be reached or used now; the message says which and why.

    A ConfigError, so a proxy refuses to start without its keys; the CLI tells it apart (exit
    1, not 2): the configuration is right, the database or the machine is not.
    """


@contextlib.contextmanager
def gc_paused(*, freeze: bool = False) -> Iterator[None]:
    """No cyclic garbage collection while building one object per key: at 100,000 keys the
    collector's repeated passes over the growing heap cost more than the building itself (none
    of these objects form cycles).

    ``freeze``: what was built is kept for long (every key of a store, read at a proxy's
    start): move it out of the collector's generations (``gc.freeze``) before collection
    resumes, or the next collections scan those 300,000 objects once per generation (about
    half a second). Reference counting still frees them when they are replaced; only cyclic
    garbage alive at that instant would stay, which a start-up or a rare full resync has little
    of (the server freezes its heap once it is ready anyway, ``web.server``).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        if freeze:
            gc.freeze()
    finally:
        if was_enabled:
            gc.enable()
