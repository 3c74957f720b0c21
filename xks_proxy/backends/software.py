"""The software backend: AES-256-GCM with ``cryptography`` over keys from the key store.

The key store (SQLite or PostgreSQL) is never in the request path: every key's sealed rows are
in memory, kept current by a ``StoreFollower`` (PostgreSQL NOTIFY, and a poll once a second), so
``xks-proxy keys disable`` on any host takes effect on every running proxy within a second. A
version is unsealed the first time a request needs it, into a bounded cache (``key_cache_size``).
When the database cannot be read the proxy goes on serving the keys it has and its health check
reports DEGRADED (the log says why) until the store is back. The SigV4 credentials of key stores
with ``credentials_store = "database"`` arrive the same way (``stored_credentials``), unsealed
once per change; a credential that does not unseal is left out (refused), never guessed at.
AES-GCM on a few KiB takes microseconds, so it runs on the event loop; database reads run in a
thread, and so does unsealing a version under a KEK in an HSM (a call to the token on a cache
miss). If that HSM is out of reach, keys already unsealed keep serving, a version not yet
unsealed gets a retryable InternalException (never KeyNotFound: the key exists), and health
reports DEGRADED with the reason until the token answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xks_proxy import __version__
from xks_proxy.aad import CiphertextMetadata, ekm_aad
from xks_proxy.backends.base import (
    AES_256,
    Backend,
    EkmHealth,
    HealthState,
    KeyInfo,
    SealedData,
)
from xks_proxy.config import AuditConfig, SoftwareBackendConfig
from xks_proxy.errors import ConfigError, InternalError, InvalidCiphertextError, KeyNotFoundError
from xks_proxy.keymgmt.audit import LifecycleAudit, sweeper_actor
from xks_proxy.keymgmt.service import KeyManager
from xks_proxy.keystore.cache import UnsealedKeyCache
from xks_proxy.keystore.credentials import unseal_credential
from xks_proxy.keystore.follower import StoreFollower
from xks_proxy.keystore.records import (
    HEALTH_KEY_ID,
    KeyRecord,
    KeyStoreUnavailableError,
    StoreChanges,
    StoredCredential,
    gc_paused,
)
from xks_proxy.keystore.sealing import KekMismatchError
from xks_proxy.keystore.store import KeyDatabase, open_key_database
from xks_proxy.safelog import log_unexpected
from xks_proxy.sigv4 import Credential

log = logging.getLogger(__name__)
IV_BYTES = 12
TAG_BYTES = 16
_HEALTH_PLAINTEXT = b"xks-proxy health check"
_NO_CREDENTIALS: Mapping[str, Credential] = {}
# Deletion dates are days apart (7 to 30); a minute late is on time.
SWEEP_INTERVAL_SECONDS = 60.0


@functools.lru_cache(maxsize=1024)
def _timestamp(iso: str) -> float:
    """Epoch seconds of an ISO 8601 instant; parsed when a request first needs it, not for
    every key at start-up (only imported keys with ``--valid-to`` have one)."""
    return datetime.fromisoformat(iso).timestamp()


def _expired(record: KeyRecord) -> bool:
    """Past its ``--valid-to``: checked on every request, so imported material is unusable
    (DISABLED) from that instant itself, not from the next sweep that deletes it."""
    return record.valid_to is not None and time.time() >= _timestamp(record.valid_to)


class SoftwareBackend:
    """Keys from the embedded store, AES-GCM in this process."""

    def __init__(self, config: SoftwareBackendConfig) -> None:
        self._config = config
        self._db: KeyDatabase | None = None
        self._follower: StoreFollower | None = None
        self._cache: UnsealedKeyCache | None = None
        # The store's records as read: nothing is derived per key at start-up (a proxy over
        # 100,000 keys would spend a second on it); requests derive what they need.
        self._keys: dict[str, KeyRecord] = {}
        self._health_key: KeyRecord | None = None
        # The KeyInfo of each key a request asked about, built then (about 1.4 µs each: for
        # every key at start-up that was a second, for every request a cost on the hot path)
        # and dropped with the record it was built from.
        self._infos: dict[str, KeyInfo] = {}
        self._sweeper: asyncio.Task[None] | None = None
        # Told the store's revision after each change is taken in (authz/stored.py).
        self._store_listeners: list[Callable[[int], None]] = []
        # Until the runtime says where (``audit_lifecycle_to``), sweeps are not audited.
        self._lifecycle_audit = LifecycleAudit(AuditConfig(enabled=False))
        # Key store name -> access key id -> credential; replaced whole on each change.
        self._credentials: dict[str, dict[str, Credential]] = {}

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def database(self) -> KeyDatabase:
        """The open key store (after ``open``), for what else it keeps (stored policies)."""
        if self._db is None:
            raise ConfigError(f"backend {self.name} is not open")
        return self._db

    def add_store_listener(self, listener: Callable[[int], None]) -> Callable[[], None]:
        """Call ``listener(revision)`` on the event loop whenever the store moved on; returns
        the function that removes it."""
        self._store_listeners.append(listener)
        return lambda: self._store_listeners.remove(listener)

    @property
    def vendor(self) -> str:
        return "xks-proxy"

    @property
    def store_problem(self) -> str | None:
        """Why the key store cannot be read, or its HSM KEK reached, now (health is DEGRADED),
        or None."""
        problem = self._follower.problem if self._follower is not None else None
        return problem or (self._db.sealer.problem if self._db is not None else None)

    def stored_credentials(self, key_store: str) -> Mapping[str, Credential]:
        """The credentials the store holds for ``key_store`` now (empty before ``open``)."""
        return self._credentials.get(key_store, _NO_CREDENTIALS)

    async def open(self) -> None:
        try:
            await self._open()
        except KeyStoreUnavailableError as error:
            # A proxy cannot start without its keys; this is the reason to show.
            raise KeyStoreUnavailableError(f"backends.{self.name}: {error}") from None

    async def _open(self) -> None:
        self._db = await asyncio.to_thread(open_key_database, self._config)
        self._cache = UnsealedKeyCache(self._db.sealer, self._config.key_cache_size)
        try:
            await asyncio.to_thread(self._db.ensure_health_key)
            self._follower = StoreFollower(self._db, self._apply)
            await self._follower.start()
            self._sweeper = asyncio.create_task(self._sweep_forever())
            if self._health_key is None:
                raise ConfigError(f"key store {self._db.location.display}: no health key")
            # Unsealing the health key proves the KEK before the proxy says it is ready.
            await self._cache.load(self._health_key, self._health_key.newest_version)
        except BaseException:
            await self.close()
            raise
        log.info(
            "backend %s: %d keys from %s (unsealed on first use, up to %d kept)",
            self.name,
            len(self._keys),
            self._db.location.display,
            self._config.key_cache_size,
        )

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._follower is not None:
            await self._follower.stop()
        if self._db is not None:
            self._db.close()

    def _apply(self, changes: StoreChanges) -> None:
        """Take in what the store says changed; called on the event loop."""
        assert self._cache is not None
        if changes.complete:
            self._keys = {}
            self._infos = {}
            self._cache.clear()
        else:
            for key_id in changes.deleted:
                purged = self._keys.pop(key_id, None)
                self._infos.pop(key_id, None)
                if purged is not None:
                    self._cache.forget([purged])
            # The versions a key had too: deleted material leaves the cache with its record.
            previous = [self._keys[r.key_id] for r in changes.keys if r.key_id in self._keys]
            self._cache.forget([*changes.keys, *previous])
        if changes.credentials is not None:
            self._credentials = self._unsealed(changes.credentials)
        with gc_paused():
            keys, infos = self._keys, self._infos
            for record in changes.keys:
                if not record.internal:
                    keys[record.key_id] = record
                    infos.pop(record.key_id, None)
                elif record.key_id == HEALTH_KEY_ID:
                    self._health_key = record
        for listener in tuple(self._store_listeners):
            listener(changes.revision)

    def _unsealed(self, stored: list[StoredCredential]) -> dict[str, dict[str, Credential]]:
        assert self._db is not None
        credentials: dict[str, dict[str, Credential]] = {}
        for entry in stored:
            try:
                credential = unseal_credential(self._db.sealer, entry)
            except ConfigError as error:
                log.error("%s; credential %s is refused", error, entry.access_key_id)
                continue
            credentials.setdefault(entry.key_store, {})[entry.access_key_id] = credential
        return credentials

    def audit_lifecycle_to(self, audit: LifecycleAudit) -> None:
        """Where the sweeper writes its ``keyLifecycle`` lines (the runtime's audit log)."""
        self._lifecycle_audit = audit

    async def _sweep_forever(self) -> None:
        """Purge keys whose scheduled deletion date has passed, and expired imported material
        and wrapping keys; every proxy sweeps, and the store makes sure each is deleted, and
        audited, once (``KeyManager.sweep``)."""
        assert self._db is not None
        while True:
            keys = KeyManager(self._db, self._lifecycle_audit, sweeper_actor())
            try:
                purged, expired = await asyncio.to_thread(keys.sweep)
            except (KeyStoreUnavailableError, KekMismatchError):
                # The follower reports the outage (or the store's new KEK); sweep again later.
                purged, expired = [], None
            except Exception:
                log.exception("sweeping key store %s failed", self._db.location.display)
                purged, expired = [], None
            for key_id in purged:
                log.warning("purged key %s: its scheduled deletion date has passed", key_id)
            for key_id in expired.material if expired else []:
                log.warning("deleted the imported material of key %s: --valid-to passed", key_id)
            await asyncio.sleep(SWEEP_INTERVAL_SECONDS)

    async def _unseal_version(self, key: KeyRecord, version: int) -> AESGCM:
        """``version`` of ``key`` unsealed into the cache (off the event loop under an HSM KEK):
        the miss path, awaited only when ``UnsealedKeyCache.cached`` has nothing, so a request on
        a cached version runs no coroutine of its own for its key."""
        assert self._cache is not None
        if version not in key.versions:
            # Only a ciphertext names a version the key lacks: Encrypt uses the newest, and a key
            # without material is DISABLED before a request reaches the backend.
            raise InvalidCiphertextError()
        try:
            return await self._cache.load(key, version)
        except KeyStoreUnavailableError as error:
            # The HSM holding the KEK is out of reach: the key exists, and the request may be
            # retried (InternalException), never KeyNotFound.
            log.warning("unsealing key %s version %d: %s", key.key_id, version, error)
            raise InternalError() from None
        except ConfigError:
            # The row does not unseal under this KEK: the store was altered or the KEK is wrong.
            log.exception("unsealing key %s version %d failed", key.key_id, version)
            raise InternalError() from None

    def _key(self, key_id: str) -> KeyRecord:
        key = self._keys.get(key_id)
        if key is None:
            raise KeyNotFoundError()
        return key

    async def describe_key(self, key_id: str) -> KeyInfo:
        key = self._key(key_id)
        info = self._infos.get(key_id)
        if info is None:
            # A key without material (external, not imported yet or deleted) is DISABLED.
            enabled = key.enabled and bool(key.versions)
            info = self._infos[key_id] = KeyInfo(key.key_id, AES_256, key.usage, enabled)
        if info.enabled and _expired(key):
            return dataclasses.replace(info, enabled=False)
        return info

    async def encrypt(self, key_id: str, plaintext: bytes, aad: bytes | None) -> SealedData:
        key = self._key(key_id)
        version = key.newest_version
        cache = self._cache
        assert cache is not None
        # Only the record's versions: a cached cipher may outlive them (deleted material).
        cipher = cache.cached(key_id, version) if version in key.versions else None
        cipher = cipher or await self._unseal_version(key, version)
        return seal(cipher, version, plaintext, aad)

    async def decrypt(self, key_id: str, sealed: SealedData, aad: bytes | None) -> bytes:
        key = self._key(key_id)
        version = ciphertext_version(sealed)
        cache = self._cache
        assert cache is not None
        cipher = cache.cached(key_id, version) if version in key.versions else None
        cipher = cipher or await self._unseal_version(key, version)
        return unseal(cipher, sealed, aad)

    async def check_health(self) -> list[EkmHealth]:
        state = HealthState.UNAVAILABLE
        key = self._health_key
        if self._db is not None and self._db.sealer.problem:
            # An HSM KEK that failed: see whether it is back (its problem clears if so).
            with contextlib.suppress(ConfigError):
                await asyncio.to_thread(self._db.sealer.probe)
        if key is not None:
            try:
                cipher = await self._unseal_version(key, key.newest_version)
                sealed = seal(cipher, key.newest_version, _HEALTH_PLAINTEXT, None)
                if unseal(cipher, sealed, None) == _HEALTH_PLAINTEXT:
                    # Serving from memory works, but changes to the store do not arrive.
                    state = HealthState.DEGRADED if self.store_problem else HealthState.ACTIVE
            except Exception as error:
                log_unexpected(log, logging.WARNING, f"health check of backend {self.name}", error)
        model = f"xks-proxy software key store {__version__}"
        return [EkmHealth(ekm_id=self.name, model=model, state=state)]


def ciphertext_version(sealed: SealedData) -> int:
    """The key version ``seal`` recorded in ``sealed``; InvalidCiphertextError if unreadable."""
    try:
        return CiphertextMetadata.decode(sealed.ciphertext_metadata).key_version
    except ValueError:
        raise InvalidCiphertextError() from None


def seal(cipher: AESGCM, version: int, plaintext: bytes, aad: bytes | None) -> SealedData:
    """AES-256-GCM under ``cipher``, key ``version``, with the spec's EKM_AAD (xks-spec §5.2)."""
    metadata = CiphertextMetadata(key_version=version).encode()
    iv = os.urandom(IV_BYTES)
    sealed = cipher.encrypt(iv, plaintext, ekm_aad(aad, metadata))
    return SealedData(
        ciphertext=sealed[:-TAG_BYTES], iv=iv, tag=sealed[-TAG_BYTES:], ciphertext_metadata=metadata
    )


def unseal(cipher: AESGCM, sealed: SealedData, aad: bytes | None) -> bytes:
    """The plaintext of ``sealed`` under ``cipher``, the version its metadata names
    (``ciphertext_version``); raises InvalidCiphertextError for any failure."""
    # Every failure looks the same to the caller: no oracle for versions, metadata or tags.
    try:
        return cipher.decrypt(
            sealed.iv, sealed.ciphertext + sealed.tag, ekm_aad(aad, sealed.ciphertext_metadata)
        )
    except (ValueError, InvalidTag):
        raise InvalidCiphertextError() from None


_conforms: type[Backend] = SoftwareBackend
