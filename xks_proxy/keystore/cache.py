"""Unsealed key versions, ready to encrypt, in a bounded least-recently-used cache.

A proxy holds every key's sealed rows (about a hundred bytes each) but unseals a version only
when a request first needs it: an ``AESGCM`` object costs about 2.5 KiB, so unsealing all
100,000 keys of a large store at start-up would cost seconds and hundreds of MiB for keys that
may never be asked for. Under a KEK in process, unsealing is one AES-GCM decryption of 32 bytes,
microseconds, so a miss costs the request almost nothing and runs on the event loop
(``cipher``). Under a KEK in an HSM (``KeySealer.remote``) a miss is a call to the token, one
network round trip with a network HSM, so ``load`` runs it in a thread and the loop goes on
serving everything else; requests that miss on the same version at once share one unwrap.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xks_proxy.keystore.records import KeyRecord
from xks_proxy.keystore.sealing import KeySealer

DEFAULT_CAPACITY = 10_000
_Slot = tuple[str, int]


class UnsealedKeyCache:
    """Used from the event loop only; the sealer's work alone may run in a thread."""

    def __init__(self, sealer: KeySealer, capacity: int = DEFAULT_CAPACITY) -> None:
        self._sealer = sealer
        self._capacity = capacity
        self._ciphers: OrderedDict[_Slot, AESGCM] = OrderedDict()
        # Unseals running in a thread, so a burst of misses on one version unwraps it once.
        self._unsealing: dict[_Slot, asyncio.Future[bytes]] = {}
        # Moves on whenever keys are forgotten: an unseal begun before then keeps its result
        # out of the cache (the key may have been replaced under the same id meanwhile).
        self._generation = 0

    def __len__(self) -> int:
        return len(self._ciphers)

    def cached(self, key_id: str, version: int) -> AESGCM | None:
        """The version's cipher if it is unsealed already, else None: the hot path, which
        neither unseals nor waits (``load`` does on a miss)."""
        return self._cached((key_id, version))

    def cipher(self, record: KeyRecord, version: int) -> AESGCM:
        """The cipher of one version, unsealed here if need be; ``KeyError`` when the key has
        no such version."""
        slot = (record.key_id, version)
        cipher = self._cached(slot)
        if cipher is None:
            material = self._sealer.unseal(record.key_id, version, record.versions[version])
            cipher = self._keep(slot, material)
        return cipher

    async def load(self, record: KeyRecord, version: int) -> AESGCM:
        """``cipher``, with the unseal of a remote KEK (an HSM) in a thread: the sealer's
        errors (``KeyStoreUnavailableError``, ``ConfigError``) reach the caller as they are."""
        if not self._sealer.remote:
            return self.cipher(record, version)
        slot = (record.key_id, version)
        cipher = self._cached(slot)
        if cipher is not None:
            return cipher
        sealed = record.versions[version]
        generation = self._generation
        unsealing = self._unsealing.get(slot)
        if unsealing is None:
            unsealing = asyncio.ensure_future(
                asyncio.to_thread(self._sealer.unseal, record.key_id, version, sealed)
            )
            self._unsealing[slot] = unsealing
            unsealing.add_done_callback(lambda done: self._finished(slot, done))
        # A request that gives up does not cancel the unseal others wait for.
        material = await asyncio.shield(unsealing)
        if generation != self._generation:
            return AESGCM(material)
        return self._cached(slot) or self._keep(slot, material)

    def forget(self, records: Iterable[KeyRecord]) -> None:
        """Drop these keys' versions: a key may have been replaced under the same id."""
        self._generation += 1
        for record in records:
            for version in record.versions:
                self._ciphers.pop((record.key_id, version), None)
                self._unsealing.pop((record.key_id, version), None)

    def clear(self) -> None:
        self._generation += 1
        self._ciphers.clear()
        self._unsealing.clear()

    def _cached(self, slot: _Slot) -> AESGCM | None:
        cipher = self._ciphers.get(slot)
        if cipher is not None:
            self._ciphers.move_to_end(slot)
        return cipher

    def _keep(self, slot: _Slot, material: bytes) -> AESGCM:
        cipher = self._ciphers[slot] = AESGCM(material)
        if len(self._ciphers) > self._capacity:
            self._ciphers.popitem(last=False)
        return cipher

    def _finished(self, slot: _Slot, done: asyncio.Future[bytes]) -> None:
        if self._unsealing.get(slot) is done:
            del self._unsealing[slot]
        if not done.cancelled():
            done.exception()  # retrieved: a failure nobody awaited any more is not "never seen"
