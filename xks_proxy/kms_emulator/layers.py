"""The two encryption layers of a ciphertext, as AWS KMS builds them (kms-emulator.md).

Keys with Origin AWS_KMS (or imported material) have one layer: AES-256-GCM under the key's
current material, binding the key id and the encryption context. Keys in an external key store
get double encryption: that inner layer, then the XKS proxy's Encrypt of the inner ciphertext,
with request metadata, KMS's own AAD, and for GenerateDataKey* a CDIV that is checked. Decrypt
uses the material the blob names, so material rotated away still decrypts what it encrypted.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xks_proxy.kms_emulator import errors
from xks_proxy.kms_emulator.blob import Blob, BlobError
from xks_proxy.kms_emulator.core import Context, Core
from xks_proxy.kms_emulator.errors import KmsError, ProxyCallError
from xks_proxy.kms_emulator.state import Key
from xks_proxy.kms_emulator.xks_client import Caller, unb64

_IV = 12
_TAG = 16


def encryption_context(params: dict[str, Any], name: str = "EncryptionContext") -> bytes:
    """The context as bound into ciphertexts: canonical JSON (the model checked its types)."""
    context = params.get(name) or {}
    return json.dumps(context, sort_keys=True, separators=(",", ":")).encode()


def _inner_aad(key: Key, context: bytes) -> bytes:
    return key.id.encode() + b"|" + context


def _proxy_aad(key: Key, context: bytes) -> bytes:
    # KMS's own choice of AAD; it binds the key and the encryption context (xks-spec §4.2).
    return hashlib.sha256(key.arn.encode() + b"|" + context).digest()


def _invalid_ciphertext() -> KmsError:
    return KmsError("InvalidCiphertextException", "")


async def seal(
    core: Core,
    key: Key,
    plaintext: bytes,
    context: bytes,
    ctx: Context,
    operation: str,
    *,
    integrity: bool = False,
) -> bytes:
    store = core.crypto_store(key)
    material_id = key.current_material
    assert material_id is not None
    iv = os.urandom(_IV)
    inner = iv + AESGCM(unb64(key.materials[material_id])).encrypt(
        iv, plaintext, _inner_aad(key, context)
    )
    if store is None:
        return Blob(key.id, material_id, inner=inner).encode()
    try:
        sealed = await core.xks.encrypt(
            core.proxy(store, ctx),
            key.xks_key_id or "",
            inner,
            _proxy_aad(key, context),
            Caller(ctx.principal_arn, operation, key.arn, ctx.request_id),
            integrity=integrity,
        )
    except ProxyCallError as error:
        raise errors.for_crypto(error) from None
    return Blob(key.id, material_id, xks=sealed).encode()


async def open_blob(
    core: Core, raw: bytes, context: bytes, ctx: Context, operation: str, key_ref: str | None
) -> tuple[Key, str, bytes]:
    """The key, the KeyMaterialId and the plaintext of a CiphertextBlob."""
    try:
        blob = Blob.decode(raw)
    except BlobError:
        raise _invalid_ciphertext() from None
    # The key of that id in the caller's region: a multi-Region key's replica decrypts what its
    # primary (or another replica) encrypted, as in AWS.
    key = core.state.keys.get(ctx.arn(f"key/{blob.key_id}"))
    if key is None:
        raise _invalid_ciphertext()
    if key_ref is not None and core.key(key_ref, ctx).id != key.id:
        raise KmsError(
            "IncorrectKeyException",
            "The key ID in the request does not identify a CMK that can perform this operation.",
        )
    core.authorize(
        key, "kms:ReEncryptFrom" if operation == "ReEncrypt" else f"kms:{operation}", ctx
    )
    store = core.crypto_store(key)
    material_id = blob.material_id or next(iter(key.materials), None)
    material = key.materials.get(material_id or "")
    if material is None:  # material deleted (imported) or never this key's
        raise _invalid_ciphertext()
    inner = blob.inner
    if store is not None:
        if blob.xks is None:
            raise _invalid_ciphertext()
        try:
            inner = await core.xks.decrypt(
                core.proxy(store, ctx),
                key.xks_key_id or "",
                blob.xks,
                _proxy_aad(key, context),
                Caller(ctx.principal_arn, operation, key.arn, ctx.request_id),
            )
        except ProxyCallError as error:
            raise errors.for_crypto(error) from None
    if inner is None or len(inner) < _IV + _TAG:
        raise _invalid_ciphertext()
    try:
        plaintext = AESGCM(unb64(material)).decrypt(
            inner[:_IV], inner[_IV:], _inner_aad(key, context)
        )
    except InvalidTag:
        if store is not None:
            raise KmsError(
                "KMSInvalidStateException", errors.MESSAGES[errors.ProxyFailure.BAD_RESULT]
            ) from None
        raise _invalid_ciphertext() from None
    assert material_id is not None
    return key, material_id, plaintext
