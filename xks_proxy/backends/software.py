"""The software backend: AES-256-GCM with ``cryptography`` over keys from the embedded store.

Keys are loaded into memory at start and reloaded when the store file changes (another process
or the CLI committed), polled once a second, so ``xks-proxy keys disable`` takes effect on a
running proxy within about a second. AES-GCM on a few KiB takes microseconds, so it runs on the
event loop; the store's SQLite reads run in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass

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
from xks_proxy.config import SoftwareBackendConfig
from xks_proxy.errors import InvalidCiphertextError, KeyNotFoundError
from xks_proxy.keystore.store import HEALTH_KEY_ID, KeyDatabase, StoredKey

log = logging.getLogger(__name__)
IV_BYTES = 12
TAG_BYTES = 16
RELOAD_INTERVAL_SECONDS = 1.0
_HEALTH_PLAINTEXT = b"xks-proxy health check"


@dataclass(frozen=True, slots=True)
class VersionedKey:
    """A key's description and one AES-256-GCM cipher per version; new data uses the newest."""

    info: KeyInfo
    newest_version: int
    ciphers: dict[int, AESGCM]

    @classmethod
    def from_stored(cls, stored: StoredKey) -> VersionedKey:
        return cls(
            info=KeyInfo(stored.key_id, AES_256, stored.usage, stored.enabled),
            newest_version=stored.newest_version,
            ciphers={version: AESGCM(material) for version, material in stored.versions.items()},
        )


class SoftwareBackend:
    """Keys from the embedded store, AES-GCM in this process."""

    def __init__(self, config: SoftwareBackendConfig) -> None:
        self._config = config
        self._db: KeyDatabase | None = None
        self._keys: dict[str, VersionedKey] = {}
        self._health_key: VersionedKey | None = None
        self._seen_version = -1
        self._reloader: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def vendor(self) -> str:
        return "xks-proxy"

    async def open(self) -> None:
        self._db = await asyncio.to_thread(KeyDatabase, self._config.path, self._config.kek)
        await asyncio.to_thread(self._db.ensure_health_key)
        await self._reload_if_changed()
        self._reloader = asyncio.create_task(self._reload_forever())

    async def close(self) -> None:
        if self._reloader is not None:
            self._reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloader
        if self._db is not None:
            self._db.close()

    async def _reload_if_changed(self) -> None:
        assert self._db is not None
        version = await asyncio.to_thread(self._db.data_version)
        if version == self._seen_version:
            return
        stored = await asyncio.to_thread(self._db.load)
        self._keys = {k.key_id: VersionedKey.from_stored(k) for k in stored if not k.internal}
        health = [k for k in stored if k.internal and k.key_id == HEALTH_KEY_ID]
        self._health_key = VersionedKey.from_stored(health[0]) if health else None
        self._seen_version = version

    async def _reload_forever(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_INTERVAL_SECONDS)
            try:
                await self._reload_if_changed()
            except Exception:
                # Keep serving the last good snapshot; the next poll tries again.
                log.exception("reloading key store %s failed", self._config.path)

    def _key(self, key_id: str) -> VersionedKey:
        key = self._keys.get(key_id)
        if key is None:
            raise KeyNotFoundError()
        return key

    async def describe_key(self, key_id: str) -> KeyInfo:
        return self._key(key_id).info

    async def encrypt(self, key_id: str, plaintext: bytes, aad: bytes | None) -> SealedData:
        return seal(self._key(key_id), plaintext, aad)

    async def decrypt(self, key_id: str, sealed: SealedData, aad: bytes | None) -> bytes:
        return unseal(self._key(key_id), sealed, aad)

    async def check_health(self) -> list[EkmHealth]:
        state = HealthState.UNAVAILABLE
        key = self._health_key
        if key is not None:
            try:
                sealed = seal(key, _HEALTH_PLAINTEXT, None)
                if unseal(key, sealed, None) == _HEALTH_PLAINTEXT:
                    state = HealthState.ACTIVE
            except Exception:
                log.exception("health check of backend %s failed", self.name)
        model = f"xks-proxy software key store {__version__}"
        return [EkmHealth(ekm_id=self.name, model=model, state=state)]


def seal(key: VersionedKey, plaintext: bytes, aad: bytes | None) -> SealedData:
    """AES-256-GCM under the newest version, with the spec's EKM_AAD (xks-spec §5.2)."""
    metadata = CiphertextMetadata(key_version=key.newest_version).encode()
    iv = os.urandom(IV_BYTES)
    sealed = key.ciphers[key.newest_version].encrypt(iv, plaintext, ekm_aad(aad, metadata))
    return SealedData(
        ciphertext=sealed[:-TAG_BYTES], iv=iv, tag=sealed[-TAG_BYTES:], ciphertext_metadata=metadata
    )


def unseal(key: VersionedKey, sealed: SealedData, aad: bytes | None) -> bytes:
    """The plaintext of ``sealed``; raises InvalidCiphertextError for any failure."""
    # Every failure looks the same to the caller: no oracle for versions, metadata or tags.
    try:
        version = CiphertextMetadata.decode(sealed.ciphertext_metadata).key_version
        cipher = key.ciphers[version]
        return cipher.decrypt(
            sealed.iv, sealed.ciphertext + sealed.tag, ekm_aad(aad, sealed.ciphertext_metadata)
        )
    except (ValueError, KeyError, InvalidTag):
        raise InvalidCiphertextError() from None


_conforms: type[Backend] = SoftwareBackend
