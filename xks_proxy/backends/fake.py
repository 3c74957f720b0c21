"""An in-memory backend with injectable failures, for tests of everything above the backend seam.

Like go-kms-wrapping's ``TestWrapper``: keys live in a dict and the crypto is the software
backend's real AES-256-GCM (so verifying decrypts and CDIVs are real), while a test scripts the
faults no real backend produces on demand:

* ``fail_next(call, error)``: the next ``call`` raises ``error``, an ``XksError`` or any other
  exception (a backend bug); several queued errors are raised in order.
* ``corrupt_next_encrypt()``: the next Encrypt result has one bit of its tag flipped after
  sealing, as a faulty HSM might hand back; it no longer decrypts.
* ``calls``: every call made, in order, for assertions.

It is shipped in the package so tests and later suites can build a service on it, and is never
selectable from configuration: ``create_backend`` knows only the software and PKCS#11 types.
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict, deque
from typing import Literal

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xks_proxy.backends.base import (
    AES_256,
    DECRYPT,
    ENCRYPT,
    Backend,
    EkmHealth,
    HealthState,
    KeyInfo,
    SealedData,
)
from xks_proxy.backends.software import ciphertext_version, seal, unseal
from xks_proxy.errors import InvalidCiphertextError, KeyNotFoundError

FakeCall = Literal["describe_key", "encrypt", "decrypt", "check_health"]
BOTH = frozenset({ENCRYPT, DECRYPT})


@dataclasses.dataclass(frozen=True, slots=True)
class FakeKey:
    """A key's description and one AES-256-GCM cipher per version; new data uses the newest."""

    info: KeyInfo
    newest_version: int
    ciphers: dict[int, AESGCM]


class FakeBackend:
    """A ``Backend`` whose keys are in memory and whose failures are scripted."""

    def __init__(self, name: str = "fake") -> None:
        self._name = name
        self._keys: dict[str, FakeKey] = {}
        self._faults: defaultdict[FakeCall, deque[Exception]] = defaultdict(deque)
        self._corrupt_encrypts = 0
        self.calls: list[FakeCall] = []
        self.health_state = HealthState.ACTIVE

    @property
    def name(self) -> str:
        return self._name

    @property
    def vendor(self) -> str:
        return "fake"

    # -- what a test sets up ------------------------------------------------------------------
    def add_key(
        self,
        key_id: str,
        usage: frozenset[str] = BOTH,
        *,
        enabled: bool = True,
        key_spec: str = AES_256,
    ) -> None:
        """A new key with fresh random material."""
        self._keys[key_id] = FakeKey(
            info=KeyInfo(key_id, key_spec, usage, enabled),
            newest_version=1,
            ciphers={1: AESGCM(os.urandom(32))},
        )

    def fail_next(self, call: FakeCall, error: Exception) -> None:
        """Make the next ``call`` raise ``error`` instead of doing its work."""
        self._faults[call].append(error)

    def corrupt_next_encrypt(self, times: int = 1) -> None:
        """Make the next ``times`` Encrypt results fail to decrypt."""
        self._corrupt_encrypts += times

    # -- Backend ------------------------------------------------------------------------------
    def _enter(self, call: FakeCall) -> None:
        self.calls.append(call)
        if self._faults[call]:
            raise self._faults[call].popleft()

    def _key(self, key_id: str) -> FakeKey:
        key = self._keys.get(key_id)
        if key is None:
            raise KeyNotFoundError()
        return key

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def describe_key(self, key_id: str) -> KeyInfo:
        self._enter("describe_key")
        return self._key(key_id).info

    async def encrypt(self, key_id: str, plaintext: bytes, aad: bytes | None) -> SealedData:
        self._enter("encrypt")
        key = self._key(key_id)
        sealed = seal(key.ciphers[key.newest_version], key.newest_version, plaintext, aad)
        if self._corrupt_encrypts:
            self._corrupt_encrypts -= 1
            tag = bytes([sealed.tag[0] ^ 0x01]) + sealed.tag[1:]
            sealed = sealed._replace(tag=tag)
        return sealed

    async def decrypt(self, key_id: str, sealed: SealedData, aad: bytes | None) -> bytes:
        self._enter("decrypt")
        cipher = self._key(key_id).ciphers.get(ciphertext_version(sealed))
        if cipher is None:
            raise InvalidCiphertextError()
        return unseal(cipher, sealed, aad)

    async def check_health(self) -> list[EkmHealth]:
        self._enter("check_health")
        return [EkmHealth(ekm_id=self._name, model="fake", state=self.health_state)]


_conforms: type[Backend] = FakeBackend
