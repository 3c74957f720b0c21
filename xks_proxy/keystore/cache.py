"""Unsealed key versions, ready to encrypt, in a bounded least-recently-used cache.

A proxy holds every key's sealed rows (about a hundred bytes each) but unseals a version only
when a request first needs it: an ``AESGCM`` object costs about 2.5 KiB, so unsealing all
100,000 keys of a large store at start-up would cost seconds and hundreds of MiB for keys that
may never be asked for. Unsealing is one AES-GCM decryption of 32 bytes, microseconds, so a miss
costs the request almost nothing, and the hot keys stay in the cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xks_proxy.keystore.records import KeyRecord
from xks_proxy.keystore.sealing import KeySealer

DEFAULT_CAPACITY = 10_000


class UnsealedKeyCache:
    def __init__(self, sealer: KeySealer, capacity: int = DEFAULT_CAPACITY) -> None:
        self._sealer = sealer
        self._capacity = capacity
        self._ciphers: OrderedDict[tuple[str, int], AESGCM] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ciphers)

    def cipher(self, record: KeyRecord, version: int) -> AESGCM:
        """The cipher of one version; ``KeyError`` when the key has no such version."""
        slot = (record.key_id, version)
        cipher = self._ciphers.get(slot)
        if cipher is not None:
            self._ciphers.move_to_end(slot)
            return cipher
        cipher = AESGCM(self._sealer.unseal(record.key_id, version, record.versions[version]))
        self._ciphers[slot] = cipher
        if len(self._ciphers) > self._capacity:
            self._ciphers.popitem(last=False)
        return cipher

    def forget(self, records: Iterable[KeyRecord]) -> None:
        """Drop these keys' versions: a key may have been replaced under the same id."""
        for record in records:
            for version in record.versions:
                self._ciphers.pop((record.key_id, version), None)

    def clear(self) -> None:
        self._ciphers.clear()
