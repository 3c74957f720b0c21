"""The emulator's CiphertextBlob: which key, and everything needed to decrypt.

    "XKE1" || u8 kind || key id (36 ASCII) || body
    kind 1 (AWS_KMS):            body = inner IV (12) || inner ciphertext and tag
    kind 2 (EXTERNAL_KEY_STORE): body = u8 len(IV) || IV || tag (16) || u8 len(md) || md
                                        || proxy ciphertext (of the inner IV, ciphertext, tag)

As in AWS KMS the format is opaque to callers; it only has to round-trip.
"""

from __future__ import annotations

from dataclasses import dataclass

from xks_proxy.kms_emulator.xks_client import XksCiphertext

MAGIC = b"XKE1"
KIND_AWS_KMS = 1
KIND_XKS = 2
KEY_ID_LENGTH = 36
_HEADER = len(MAGIC) + 1 + KEY_ID_LENGTH


class BlobError(ValueError):
    pass


@dataclass(frozen=True)
class Blob:
    key_id: str
    inner: bytes | None = None  # AWS_KMS: IV || ciphertext || tag
    xks: XksCiphertext | None = None

    def encode(self) -> bytes:
        header = MAGIC + bytes((KIND_XKS if self.xks else KIND_AWS_KMS,)) + self.key_id.encode()
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
        if len(raw) < _HEADER + 1 or not raw.startswith(MAGIC):
            raise BlobError("not a ciphertext blob")
        kind = raw[len(MAGIC)]
        key_id = raw[len(MAGIC) + 1 : _HEADER].decode("ascii", "replace")
        body = raw[_HEADER:]
        if kind == KIND_AWS_KMS:
            return cls(key_id, inner=body)
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
        return cls(key_id, xks=XksCiphertext(ciphertext, iv, tag, metadata or None))
