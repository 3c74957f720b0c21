"""The emulator's CiphertextBlob: which key and key material, and everything needed to decrypt.

    "XKE2" || u8 kind || key id (36 ASCII) || key material id (32) || body
    ("XKE1" blobs, written before rotation, have no material id: the key's first material.)
    kind 1 (AWS_KMS):            body = inner IV (12) || inner ciphertext and tag
    kind 2 (EXTERNAL_KEY_STORE): body = u8 len(IV) || IV || tag (16) || u8 len(md) || md
                                        || proxy ciphertext (of the inner IV, ciphertext, tag)

As in AWS KMS the format is opaque to callers; it only has to round-trip.
"""

from __future__ import annotations

from dataclasses import dataclass

from xks_proxy.kms_emulator.xks_client import XksCiphertext

MAGIC = b"XKE2"
LEGACY_MAGIC = b"XKE1"
KIND_AWS_KMS = 1
KIND_XKS = 2
KEY_ID_LENGTH = 36  # a UUID, or "mrk-" and 32 hex digits
MATERIAL_ID_LENGTH = 32  # KeyMaterialId is 64 hex digits (BackingKeyIdType)
_HEADER = len(MAGIC) + 1 + KEY_ID_LENGTH


class BlobError(ValueError):
    pass


@dataclass(frozen=True)
class Blob:
    key_id: str
    material_id: str | None  # hex; None in legacy blobs
    inner: bytes | None = None  # AWS_KMS: IV || ciphertext || tag
    xks: XksCiphertext | None = None

    def encode(self) -> bytes:
        assert self.material_id is not None
        header = b"".join((
            MAGIC, bytes((KIND_XKS if self.xks else KIND_AWS_KMS,)), self.key_id.encode(),
            bytes.fromhex(self.material_id),
        ))  # fmt: skip
        if self.xks is None:
            assert self.inner is not None
            return header + self.inner
        metadata = self.xks.metadata or b""
        return b"".join((
            header, bytes((len(self.xks.iv),)), self.xks.iv, self.xks.tag,
            bytes((len(metadata),)), metadata, self.xks.ciphertext,
        ))  # fmt: skip

    @classmethod
    def decode(cls, raw: bytes) -> Blob:
        if len(raw) < _HEADER + 1 or raw[: len(MAGIC)] not in (MAGIC, LEGACY_MAGIC):
            raise BlobError("not a ciphertext blob")
        kind = raw[len(MAGIC)]
        key_id = raw[len(MAGIC) + 1 : _HEADER].decode("ascii", "replace")
        body = raw[_HEADER:]
        material_id = None
        if raw.startswith(MAGIC):
            if len(body) < MATERIAL_ID_LENGTH:
                raise BlobError("truncated blob")
            material_id, body = body[:MATERIAL_ID_LENGTH].hex(), body[MATERIAL_ID_LENGTH:]
        if kind == KIND_AWS_KMS:
            return cls(key_id, material_id, inner=body)
        if kind != KIND_XKS:
            raise BlobError("unknown blob kind")
        try:
            iv_length = body[0]
            iv = body[1 : 1 + iv_length]
            tag = body[1 + iv_length : 17 + iv_length]
            md_length = body[17 + iv_length]
            metadata = body[18 + iv_length : 18 + iv_length + md_length]
            ciphertext = body[18 + iv_length + md_length :]
        except IndexError:
            raise BlobError("truncated blob") from None
        if len(iv) != iv_length or len(tag) != 16 or len(metadata) != md_length:
            raise BlobError("truncated blob")
        return cls(key_id, material_id, xks=XksCiphertext(ciphertext, iv, tag, metadata or None))
