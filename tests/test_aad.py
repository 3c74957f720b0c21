"""EKM_AAD, CDIV and the ciphertext-metadata layout, against the spec's and derived vectors."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xks_proxy.aad import (
    AAD_SCHEME_SPEC_EKM_AAD,
    MAX_AAD_BYTES,
    CiphertextMetadata,
    cdiv,
    ekm_aad,
)


def _optional(value: str | None) -> bytes | None:
    return None if value is None else base64.b64decode(value)


def test_cdiv_spec_appendix_c(vectors: dict[str, Any]) -> None:
    for case in vectors["cdiv"]:
        digest = cdiv(
            base64.b64decode(case["aad_b64"]),
            base64.b64decode(case["ciphertext_metadata_b64"]),
            base64.b64decode(case["iv_b64"]),
            base64.b64decode(case["ciphertext_b64"]),
            base64.b64decode(case["tag_b64"]),
        )
        assert base64.b64encode(digest).decode() == case["cdiv_b64"]


def test_d3_ekm_aad_aes_gcm_and_cdiv(vectors: dict[str, Any]) -> None:
    assert len(vectors["ekm_aes_gcm"]) == 4
    for case in vectors["ekm_aes_gcm"]:
        aad = _optional(case["aad_b64"])
        metadata = _optional(case["ciphertext_metadata_b64"])
        full_aad = ekm_aad(aad, metadata)
        assert full_aad.hex() == case["ekm_aad_hex"]
        iv = base64.b64decode(case["iv_b64"])
        sealed = AESGCM(base64.b64decode(case["key_b64"])).encrypt(
            iv, base64.b64decode(case["plaintext_b64"]), full_aad
        )
        ciphertext, tag = sealed[:-16], sealed[-16:]
        assert base64.b64encode(ciphertext).decode() == case["ciphertext_b64"]
        assert base64.b64encode(tag).decode() == case["tag_b64"]
        digest = cdiv(aad, metadata, iv, ciphertext, tag)
        assert base64.b64encode(digest).decode() == case["cdiv_b64"]


def test_absent_and_empty_aad_are_the_same() -> None:
    # xks-spec §12 item 10: by the spec's formula, absent and empty both have length zero.
    assert ekm_aad(None, None) == ekm_aad(b"", b"") == b"\x00\x00\x00"
    assert cdiv(None, None, b"i", b"c", b"t") == cdiv(b"", b"", b"i", b"c", b"t")


def test_ekm_aad_limits() -> None:
    assert len(ekm_aad(b"a" * MAX_AAD_BYTES, b"m" * 20)) == 2 + MAX_AAD_BYTES + 1 + 20
    with pytest.raises(ValueError):
        ekm_aad(b"a" * (MAX_AAD_BYTES + 1), None)
    with pytest.raises(ValueError):
        ekm_aad(None, b"m" * 21)


def test_metadata_moved_into_aad_does_not_collide() -> None:
    # The attack §5.2 names: AAD "" with metadata M must differ from AAD M with no metadata.
    assert ekm_aad(None, b"key_version=1") != ekm_aad(b"key_version=1", None)


def test_ciphertext_metadata_round_trip_and_size() -> None:
    metadata = CiphertextMetadata(key_version=7)
    raw = metadata.encode()
    assert len(raw) <= 20
    assert CiphertextMetadata.decode(raw) == metadata
    assert metadata.aad_scheme == AAD_SCHEME_SPEC_EKM_AAD


@pytest.mark.parametrize(
    "raw",
    [None, b"", b"key_version=1", b"\x02\x01\x00\x00\x00\x01", b"\x01\x02\x00\x00\x00\x01"],
    ids=["absent", "empty", "foreign", "unknown format", "unknown aad scheme"],
)
def test_ciphertext_metadata_rejects_unknown(raw: bytes | None) -> None:
    with pytest.raises(ValueError):
        CiphertextMetadata.decode(raw)
