"""Byte layouts the spec fixes around AES-GCM: EKM_AAD (xks-spec §5.2) and the CDIV (§5.3).

Also the proxy's own ``ciphertextMetadata`` layout, which records what decrypt needs to know:

    ciphertextMetadata = u8(format) || u8(aad_scheme) || u32be(key_version)     (6 bytes)

The spec caps ciphertextMetadata at 20 bytes and says an AAD-scheme change SHOULD be recorded in
it (§5.2), so the scheme is recorded from day one. The format byte lets a later layout coexist.
"""

from __future__ import annotations

import hashlib
import struct
from typing import NamedTuple

# XKS spec §5.2: the 2-byte AAD length prefix bounds the AAD this scheme can carry.
MAX_AAD_BYTES = 0xFFFF
# XKS spec §4.2: ciphertextMetadata is at most 20 bytes before Base64.
MAX_CIPHERTEXT_METADATA_BYTES = 20

METADATA_FORMAT_V1 = 1
# The only AAD scheme so far: the spec's length-prefixed EKM_AAD.
AAD_SCHEME_SPEC_EKM_AAD = 1
_METADATA_V1 = struct.Struct(">BBI")


def ekm_aad(aad: bytes | None, ciphertext_metadata: bytes | None) -> bytes:
    """EKM_AAD = u16be(len AAD) || AAD || u8(len md) || md (xks-spec §5.2).

    Absent values count as zero-length, so ``ekm_aad(None, None) == b"\\x00\\x00\\x00"``.
    """
    aad = aad or b""
    metadata = ciphertext_metadata or b""
    if len(aad) > MAX_AAD_BYTES:
        raise ValueError("AAD longer than 65535 bytes cannot be length-prefixed")
    if len(metadata) > MAX_CIPHERTEXT_METADATA_BYTES:
        raise ValueError("ciphertextMetadata longer than 20 bytes")
    return b"".join((len(aad).to_bytes(2, "big"), aad, bytes((len(metadata),)), metadata))


def cdiv(
    aad: bytes | None,
    ciphertext_metadata: bytes | None,
    iv: bytes,
    ciphertext: bytes,
    tag: bytes,
) -> bytes:
    """SHA-256(AAD || ciphertextMetadata || IV || ciphertext || tag), no length prefixes (§5.3)."""
    digest = hashlib.sha256()
    for part in (aad or b"", ciphertext_metadata or b"", iv, ciphertext, tag):
        digest.update(part)
    return digest.digest()


class CiphertextMetadata(NamedTuple):
    """What the proxy records about one ciphertext: the AAD scheme and the key version."""

    key_version: int
    aad_scheme: int = AAD_SCHEME_SPEC_EKM_AAD

    def encode(self) -> bytes:
        return _METADATA_V1.pack(METADATA_FORMAT_V1, self.aad_scheme, self.key_version)

    @classmethod
    def decode(cls, raw: bytes | None) -> CiphertextMetadata:
        """Parse metadata made by :meth:`encode`; raises ``ValueError`` for anything else."""
        if raw is None or len(raw) != _METADATA_V1.size:
            raise ValueError("unrecognised ciphertextMetadata")
        fmt, scheme, version = _METADATA_V1.unpack(raw)
        if fmt != METADATA_FORMAT_V1 or scheme != AAD_SCHEME_SPEC_EKM_AAD:
            raise ValueError("unrecognised ciphertextMetadata")
        return cls(key_version=version, aad_scheme=scheme)
