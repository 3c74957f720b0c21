"""Sealing key versions under the key-encryption key (KEK): the row format every store shares.

Each version's 32 bytes of material are encrypted with AES-256-GCM under the KEK, a fresh 96-bit
nonce per seal, and the key id and version bound as AAD, so a row copied onto another key or
version (in SQLite, in PostgreSQL, or moved between them) fails to unseal instead of decrypting
under the wrong name.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xks_proxy.errors import ConfigError
from xks_proxy.keystore.records import SealedVersion

KEY_BYTES = 32
NONCE_BYTES = 12


def bound_aad(key_id: str, version: int) -> bytes:
    return f"xks-proxy key {key_id} version {version}".encode()


def _secret_aad(name: str) -> bytes:
    return f"xks-proxy store secret {name}".encode()


class KeySealer:
    """Seals and unseals key versions of one store; ``location`` names it in errors."""

    def __init__(self, kek: bytes, location: str) -> None:
        self._kek = AESGCM(kek)
        self._location = location

    def seal(self, key_id: str, version: int, material: bytes) -> SealedVersion:
        nonce = os.urandom(NONCE_BYTES)
        return SealedVersion(nonce, self._kek.encrypt(nonce, material, bound_aad(key_id, version)))

    def seal_secret(self, name: str, secret: bytes) -> SealedVersion:
        """A store secret other than key material (BYOK wrapping and token-signing keys), bound
        to its name so it cannot pass for key material or another secret."""
        nonce = os.urandom(NONCE_BYTES)
        return SealedVersion(nonce, self._kek.encrypt(nonce, secret, _secret_aad(name)))

    def unseal_secret(self, name: str, sealed: SealedVersion) -> bytes:
        try:
            return self._kek.decrypt(sealed.nonce, sealed.sealed, _secret_aad(name))
        except InvalidTag:
            raise ConfigError(
                f"key store {self._location}: secret {name} does not decrypt under the "
                "configured key-encryption key (wrong kek, or the store was altered)"
            ) from None

    def unseal(self, key_id: str, version: int, sealed: SealedVersion) -> bytes:
        try:
            return self._kek.decrypt(sealed.nonce, sealed.sealed, bound_aad(key_id, version))
        except InvalidTag:
            raise ConfigError(
                f"key store {self._location}: key {key_id} version {version} does not decrypt "
                "under the configured key-encryption key (wrong kek, or the store was altered)"
            ) from None
