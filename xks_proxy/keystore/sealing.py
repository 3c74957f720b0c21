"""Sealing key versions under the key-encryption key (KEK): the row format every store shares.

Two kinds of KEK seal the same rows (``key_versions.nonce``/``sealed``, and the sealed store
secrets: BYOK wrapping keys, the import-token signing key):

* ``software`` (``kek = "file:…"``/``"env:…"``, 32 bytes in process): each version's 32 bytes
  of material are encrypted with AES-256-GCM under the KEK, a fresh 96-bit nonce per seal, and
  the key id and version bound as AAD.
* ``pkcs11`` (``kek = "pkcs11:…"``, an AES key that never leaves an HSM, ``hsm_kek``): the HSM
  wraps and unwraps with CKM_AES_KEY_WRAP_PAD (RFC 5649). Key wrap has no AAD, so the binding
  is wrapped *with* the material: the HSM wraps ``SHA-256(binding) || length || material ||
  zero padding`` and, after unwrapping, the proxy compares the digest with the binding it
  expects. Key wrap is deterministic authenticated encryption (NIST SP 800-38F): every
  ciphertext bit depends on every input byte and a changed row fails the unwrap, so nobody
  without the HSM can make a row whose unwrapped digest names another key (and a row copied
  as a whole still names the key it was made for). The ``nonce`` column of such a row is empty.

Either way a row copied onto another key or version (or another secret's name), in SQLite, in
PostgreSQL, or moved between them, fails to unseal instead of decrypting under the wrong name.

Which KEK sealed a store is recorded in the store itself (``store_meta.kek_check``): the KEK's
kind and check value, ``kind:hex``. The check value is the first 8 bytes of SHA-256 over the
KEK's AES key wrap (RFC 5649, deterministic) of a fixed constant: it names a key without
revealing it, is the same for the same key bytes wherever they live, and an HSM can compute it
for a key it will never export. A proxy configured with another KEK is refused with a message
naming both (``KekMismatchError``), rather than failing row by row with garbage.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from typing import ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from xks_proxy.errors import ConfigError
from xks_proxy.kek_config import Kek
from xks_proxy.keystore.records import SealedVersion

KEY_BYTES = 32
NONCE_BYTES = 12
# What the check value wraps: 32 bytes (a multiple of 8; see ``hsm_kek`` on SoftHSM).
CHECK_PLAINTEXT = hashlib.sha256(b"xks-proxy key-encryption-key check value").digest()


def bound_aad(key_id: str, version: int) -> bytes:
    return f"xks-proxy key {key_id} version {version}".encode()


def secret_aad(name: str) -> bytes:
    return f"xks-proxy store secret {name}".encode()


def check_value(wrapped_constant: bytes) -> str:
    """The KEK's check value from its key wrap of ``CHECK_PLAINTEXT``."""
    return hashlib.sha256(wrapped_constant).digest()[:8].hex()


def describe_identity(identity: str) -> str:
    """``pkcs11:1a2b…`` as people read it: "a pkcs11 KEK with check value 1a2b…"."""
    kind, _, value = identity.partition(":")
    return f"a {kind} KEK with check value {value}"


class KekMismatchError(ConfigError):
    """The store is sealed under another KEK than the one configured: nothing will unseal."""


class KeySealer(ABC):
    """Seals and unseals the key versions and secrets of one store; ``location`` names it in
    errors. Subclasses say how a plaintext is sealed bound to a name, and what their KEK is."""

    kind: ClassVar[str]
    # Whether unsealing is a call to a device (an HSM) rather than arithmetic in this process:
    # then the backend runs it in a thread, off the event loop (``keystore.cache``).
    remote: ClassVar[bool] = False
    # Why the KEK cannot be used now (an HSM out of reach), or None.
    problem: str | None = None

    def __init__(self, location: str) -> None:
        self._location = location

    def __str__(self) -> str:
        """The KEK as errors name it (never its value): its kind and check value, and for an
        HSM which key on which token."""
        return describe_identity(self.identity)

    @property
    def identity(self) -> str:
        """``kind:check value``, as ``store_meta.kek_check`` records it."""
        return f"{self.kind}:{self.check_value()}"

    @abstractmethod
    def check_value(self) -> str: ...

    @abstractmethod
    def _seal(self, plaintext: bytes, binding: bytes) -> SealedVersion: ...

    @abstractmethod
    def _unseal(self, sealed: SealedVersion, binding: bytes) -> bytes | None:
        """The plaintext, or None when ``sealed`` does not authenticate under this KEK and
        ``binding``. A KEK that cannot be reached raises ``KeyStoreUnavailableError``."""

    def close(self) -> None:  # noqa: B027 (a KEK in process holds nothing to let go of)
        """Let go of what the KEK holds (an HSM session)."""

    def probe(self) -> None:  # noqa: B027 (a KEK in process is always reachable)
        """Try to reach the KEK again after ``problem`` was set (the health check does)."""

    def seal(self, key_id: str, version: int, material: bytes) -> SealedVersion:
        return self._seal(material, bound_aad(key_id, version))

    def seal_secret(self, name: str, secret: bytes) -> SealedVersion:
        """A store secret other than key material (BYOK wrapping and token-signing keys), bound
        to its name so it cannot pass for key material or another secret."""
        return self._seal(secret, secret_aad(name))

    def unseal_secret(self, name: str, sealed: SealedVersion) -> bytes:
        secret = self._unseal(sealed, secret_aad(name))
        if secret is None:
            raise ConfigError(
                f"key store {self._location}: secret {name} does not decrypt under the "
                "configured key-encryption key (wrong kek, or the store was altered)"
            )
        return secret

    def unseal(self, key_id: str, version: int, sealed: SealedVersion) -> bytes:
        material = self._unseal(sealed, bound_aad(key_id, version))
        if material is None:
            raise ConfigError(
                f"key store {self._location}: key {key_id} version {version} does not decrypt "
                "under the configured key-encryption key (wrong kek, or the store was altered)"
            )
        return material


class SoftwareKeySealer(KeySealer):
    """AES-256-GCM under a 32-byte KEK held in this process."""

    kind = "software"

    def __init__(self, kek: bytes, location: str) -> None:
        super().__init__(location)
        self._kek = AESGCM(kek)
        self._check_value = check_value(aes_key_wrap_with_padding(kek, CHECK_PLAINTEXT))

    def check_value(self) -> str:
        return self._check_value

    def _seal(self, plaintext: bytes, binding: bytes) -> SealedVersion:
        nonce = os.urandom(NONCE_BYTES)
        return SealedVersion(nonce, self._kek.encrypt(nonce, plaintext, binding))

    def _unseal(self, sealed: SealedVersion, binding: bytes) -> bytes | None:
        if len(sealed.nonce) != NONCE_BYTES:
            return None  # an HSM-wrapped row (no nonce): not this kind of KEK
        try:
            return self._kek.decrypt(sealed.nonce, sealed.sealed, binding)
        except InvalidTag:
            return None


def make_sealer(kek: Kek, location: str) -> KeySealer:
    """The sealer of a configured KEK; an HSM KEK is opened (and proved) here."""
    if isinstance(kek, bytes):
        return SoftwareKeySealer(kek, location)
    from xks_proxy.keystore.hsm_kek import HsmKeySealer  # python-pkcs11 only when configured

    return HsmKeySealer(kek, location)
