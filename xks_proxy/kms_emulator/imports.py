"""Imported key material (Origin EXTERNAL), as the Developer Guide's "Importing key material"
describes it.

- CreateKey with Origin EXTERNAL makes a key in PendingImport, without material.
- GetParametersForImport gives an RSA wrapping public key (RSA_2048/3072/4096, DER
  SubjectPublicKeyInfo) and an import token; both expire after 24 hours.
- ImportKeyMaterial takes 32 bytes of material wrapped with RSAES_OAEP_SHA_1/256 or
  RSA_AES_KEY_WRAP_SHA_1/256 (RSA-OAEP of an ephemeral AES-256 key, then AES key wrap with
  padding, RFC 5649, of the material), with ``ValidTo`` (KEY_MATERIAL_EXPIRES, at most 365 days
  ahead) or KEY_MATERIAL_DOES_NOT_EXPIRE. The key becomes Enabled.
- Only the same material may be imported again (EXISTING_KEY_MATERIAL): a KMS key never
  changes material by re-import; this emulator does not rotate imported material
  (NEW_KEY_MATERIAL after the first import is UnsupportedOperationException).
- DeleteImportedKeyMaterial, or ValidTo passing, removes the material: the key is PendingImport
  until the same material is imported again, after which old ciphertexts decrypt again.

RSAES_PKCS1_V1_5 (withdrawn by AWS) and SM2 (China Regions only) are refused.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding

from xks_proxy.kms_emulator import errors
from xks_proxy.kms_emulator.core import Context, Core, Params, invalid_state
from xks_proxy.kms_emulator.errors import KmsError
from xks_proxy.kms_emulator.keys import DAY
from xks_proxy.kms_emulator.state import ImportParameters, Key, KeyState, Origin
from xks_proxy.kms_emulator.xks_client import b64

PARAMETERS_LIFETIME = DAY  # import tokens and wrapping keys expire after 24 hours
MAX_VALID_TO = 365 * DAY
MATERIAL_BYTES = 32
MAX_PENDING_TOKENS = 10
_TOKEN_MAGIC = b"XKI1"
_TOKEN_ID_BYTES = 16
_RSA_BITS = {"RSA_2048": 2048, "RSA_3072": 3072, "RSA_4096": 4096}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "RSAES_OAEP_SHA_1": hashes.SHA1,
    "RSAES_OAEP_SHA_256": hashes.SHA256,
    "RSA_AES_KEY_WRAP_SHA_1": hashes.SHA1,
    "RSA_AES_KEY_WRAP_SHA_256": hashes.SHA256,
}


def _external_key(core: Core, params: Params, ctx: Context) -> Key:
    key = core.key(params["KeyId"], ctx, aliases=False)
    if key.origin != Origin.EXTERNAL:
        raise KmsError(
            "UnsupportedOperationException",
            f"{key.arn} origin is {key.origin} which is not valid for this operation.",
        )
    if key.state == KeyState.PENDING_DELETION:
        raise invalid_state(key)
    return key


async def get_parameters(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key = _external_key(core, params, ctx)
    algorithm, spec = params["WrappingAlgorithm"], params["WrappingKeySpec"]
    if algorithm not in _HASHES or spec not in _RSA_BITS:
        raise KmsError(
            "UnsupportedOperationException",
            f"{algorithm} with {spec} is not supported: use RSAES_OAEP_SHA_1/256 or "
            "RSA_AES_KEY_WRAP_SHA_1/256 with RSA_2048, RSA_3072 or RSA_4096.",
        )
    private = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[spec])
    now = time.time()
    token_id = secrets.token_bytes(_TOKEN_ID_BYTES)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    live = {t: p for t, p in key.import_parameters.items() if p.valid_to > now}
    newest = sorted(live.items(), key=lambda item: item[1].valid_to)[-(MAX_PENDING_TOKENS - 1) :]
    key.import_parameters = {
        **dict(newest),
        token_id.hex(): ImportParameters(pem, algorithm, now + PARAMETERS_LIFETIME),
    }
    core.state.save_key(key)
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "KeyId": key.arn,
        "ImportToken": b64(_TOKEN_MAGIC + token_id + key.id.encode()),
        "PublicKey": b64(public),
        "ParametersValidTo": now + PARAMETERS_LIFETIME,
    }


def _parameters(key: Key, token: bytes) -> tuple[str, ImportParameters]:
    """The token's id and the parameters it names."""
    header = len(_TOKEN_MAGIC) + _TOKEN_ID_BYTES
    if not token.startswith(_TOKEN_MAGIC) or token[header:] != key.id.encode():
        raise KmsError(
            "InvalidImportTokenException",
            "The import token is invalid or belongs to another KMS key.",
        )
    token_id = token[len(_TOKEN_MAGIC) : header].hex()
    parameters = key.import_parameters.get(token_id)
    if parameters is None:
        raise KmsError("InvalidImportTokenException", "The import token is not valid.")
    if parameters.valid_to <= time.time():
        raise KmsError(
            "ExpiredImportTokenException",
            "The import token has expired: call GetParametersForImport again.",
        )
    return token_id, parameters


def _unwrap(parameters: ImportParameters, wrapped: bytes) -> bytes:
    private = serialization.load_pem_private_key(parameters.private_key.encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    digest = _HASHES[parameters.algorithm]()
    oaep = padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)
    rsa_bytes = private.key_size // 8
    try:
        if parameters.algorithm.startswith("RSA_AES_KEY_WRAP"):
            ephemeral = private.decrypt(wrapped[:rsa_bytes], oaep)
            return aes_key_unwrap_with_padding(ephemeral, wrapped[rsa_bytes:])
        return private.decrypt(wrapped, oaep)
    except (ValueError, InvalidUnwrap):
        raise KmsError(
            "InvalidCiphertextException",
            "The encrypted key material could not be decrypted with the wrapping "
            f"key and {parameters.algorithm}.",
        ) from None


def _expiry(params: Params) -> tuple[str, float | None]:
    model = params.get("ExpirationModel") or "KEY_MATERIAL_EXPIRES"
    valid_to = params.get("ValidTo")
    if model == "KEY_MATERIAL_DOES_NOT_EXPIRE":
        if valid_to is not None:
            raise errors.validation(
                "ValidTo is not valid when ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE."
            )
        return model, None
    if valid_to is None:
        raise errors.validation("ValidTo is required when ExpirationModel is KEY_MATERIAL_EXPIRES.")
    now = time.time()
    if not now < float(valid_to) <= now + MAX_VALID_TO:
        raise errors.validation("ValidTo must be in the future and at most 365 days from now.")
    return model, float(valid_to)


async def import_material(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key = _external_key(core, params, ctx)
    token_id, parameters = _parameters(key, base64.b64decode(params["ImportToken"]))
    expiration_model, valid_to = _expiry(params)
    material = _unwrap(parameters, base64.b64decode(params["EncryptedKeyMaterial"]))
    if len(material) != MATERIAL_BYTES:
        raise KmsError(
            "IncorrectKeyMaterialException",
            "Key material for a symmetric encryption key must be 256 bits.",
        )
    digest = hashlib.sha256(material).hexdigest()
    first = key.imported_digest is None
    import_type = params.get("ImportType") or (
        "NEW_KEY_MATERIAL" if first else "EXISTING_KEY_MATERIAL"
    )
    if import_type == "NEW_KEY_MATERIAL" and not first:
        raise KmsError(
            "UnsupportedOperationException",
            "The emulator does not rotate imported key material: import the same "
            "material (EXISTING_KEY_MATERIAL).",
        )
    if (import_type == "EXISTING_KEY_MATERIAL" and first) or (
        not first and digest != key.imported_digest
    ):
        raise KmsError(
            "IncorrectKeyMaterialException",
            "The key material is not the key material previously imported into this KMS key.",
        )
    material_id = key.current_material or secrets.token_hex(32)
    if params.get("KeyMaterialId") not in (None, material_id):
        raise KmsError(
            "IncorrectKeyMaterialException",
            f"KeyMaterialId {params['KeyMaterialId']} is not this key's material.",
        )
    key.materials = {material_id: b64(material)}
    key.current_material, key.imported_digest = material_id, digest
    key.expiration_model, key.valid_to = expiration_model, valid_to
    if key.state == KeyState.PENDING_IMPORT:
        key.state = KeyState.ENABLED
    del key.import_parameters[token_id]  # a token serves one import
    core.state.save_key(key)
    return {"KeyId": key.arn, "KeyMaterialId": material_id}


def _remove_material(key: Key) -> None:
    key.materials = {}
    key.state = KeyState.PENDING_IMPORT
    key.expiration_model, key.valid_to = None, None


async def delete_material(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key = _external_key(core, params, ctx)
    if params.get("KeyMaterialId") not in (None, key.current_material):
        raise KmsError(
            "NotFoundException",
            f"Key material {params['KeyMaterialId']} does not exist for {key.arn}.",
        )
    _remove_material(key)
    core.state.save_key(key)
    answer = {"KeyId": key.arn}
    if key.current_material is not None:
        answer["KeyMaterialId"] = key.current_material
    return answer


def expire_due(core: Core, now: float) -> None:
    """Imported material whose ValidTo has passed is deleted: the key goes back to PendingImport."""
    for key in core.state.keys.values():
        if key.valid_to is not None and key.valid_to <= now and key.materials:
            _remove_material(key)
            core.state.save_key(key)
