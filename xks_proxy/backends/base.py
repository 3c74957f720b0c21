"""The contract every key backend implements, and the values it returns.

Backends own the cryptography and their native error translation: they raise only
``xks_proxy.errors.XksError`` subclasses. They never see HTTP, metrics or the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple, Protocol

# XKS spec §4.1: keySpec for a 256-bit AES key; the only kind v1 supports.
AES_256 = "AES_256"
ENCRYPT = "ENCRYPT"
DECRYPT = "DECRYPT"


class HealthState(StrEnum):
    """xks-spec §4.4: the states of one external key manager."""

    ACTIVE = "ACTIVE"
    DEGRADED = "DEGRADED"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What GetKeyMetadata reports, and what the service checks before using a key."""

    key_id: str
    key_spec: str
    usage: frozenset[str]
    enabled: bool


class SealedData(NamedTuple):
    """One AES-GCM result as XKS carries it: what Encrypt answers and Decrypt takes back
    (xks-spec §4.2, §4.3). ``ciphertext_metadata`` is the backend's own, bound into the AAD."""

    ciphertext: bytes
    iv: bytes
    tag: bytes
    ciphertext_metadata: bytes | None


@dataclass(frozen=True, slots=True)
class EkmHealth:
    """One ekmFleetDetails entry (xks-spec §4.4)."""

    ekm_id: str
    model: str
    state: HealthState


class Backend(Protocol):
    """A key backend. Every method raises ``XksError`` subclasses only."""

    @property
    def name(self) -> str: ...

    @property
    def vendor(self) -> str: ...

    async def open(self) -> None:
        """Connect, log in, load keys; raise ``ConfigError`` when that cannot work."""

    async def close(self) -> None: ...

    async def describe_key(self, key_id: str) -> KeyInfo:
        """Raises: KeyNotFoundError."""

    async def encrypt(self, key_id: str, plaintext: bytes, aad: bytes | None) -> SealedData:
        """AES-256-GCM under the key's newest version, with the spec's EKM_AAD.

        Raises: KeyNotFoundError, InternalError, DependencyTimeoutError.
        """

    async def decrypt(self, key_id: str, sealed: SealedData, aad: bytes | None) -> bytes:
        """Raises: KeyNotFoundError, InvalidCiphertextError, InternalError,
        DependencyTimeoutError."""

    async def check_health(self) -> list[EkmHealth]:
        """A deep check: a real encrypt and decrypt with the backend's internal health key."""
