"""Cryptographic operations on symmetric keys: Encrypt, Decrypt, ReEncrypt, GenerateDataKey*,
GenerateRandom. Sizes and types were checked against the service model before a handler runs.

``DryRun`` runs every check (key, state, parameters) and then answers
DryRunOperationException instead of encrypting, as AWS does. Grant tokens are accepted.
Decrypt's ``KeyMaterialId`` is present for keys whose material KMS holds (not for keys in an
external key store, whose material is in the external key manager).
"""

from __future__ import annotations

import base64
import os
from typing import Any

from xks_proxy.kms_emulator import errors
from xks_proxy.kms_emulator.core import Context, Core, Params
from xks_proxy.kms_emulator.errors import KmsError
from xks_proxy.kms_emulator.layers import encryption_context, open_blob, seal
from xks_proxy.kms_emulator.state import Key, Origin
from xks_proxy.kms_emulator.xks_client import b64

SYMMETRIC_DEFAULT = "SYMMETRIC_DEFAULT"
_DATA_KEY_BYTES = {"AES_256": 32, "AES_128": 16}


def _check_algorithm(key: Key, params: Params, member: str = "EncryptionAlgorithm") -> None:
    algorithm = params.get(member) or SYMMETRIC_DEFAULT
    if algorithm != SYMMETRIC_DEFAULT:
        raise KmsError(
            "InvalidKeyUsageException",
            f"{key.arn} key usage is ENCRYPT_DECRYPT; the algorithm {algorithm} is "
            "not valid for this key.",
        )


def _dry_run(core: Core, key: Key, params: Params) -> None:
    """With DryRun, stop after every check has passed, the key's usability included."""
    if params.get("DryRun"):
        core.crypto_store(key)
        raise KmsError(
            "DryRunOperationException",
            "The request would have succeeded, but the DryRun option is set.",
        )


async def encrypt(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key = core.key(params["KeyId"], ctx)
    _check_algorithm(key, params)
    _dry_run(core, key, params)
    plaintext = base64.b64decode(params["Plaintext"])
    blob = await seal(core, key, plaintext, encryption_context(params), ctx, "Encrypt")
    return {"CiphertextBlob": b64(blob), "KeyId": key.arn, "EncryptionAlgorithm": SYMMETRIC_DEFAULT}


def _material_field(key: Key, material_id: str) -> dict[str, str]:
    return {} if key.origin == Origin.EXTERNAL_KEY_STORE else {"KeyMaterialId": material_id}


async def decrypt(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    if params.get("Recipient") is not None:
        raise KmsError(
            "UnsupportedOperationException",
            "The emulator does not support Nitro Enclaves recipients.",
        )
    key, material_id, plaintext = await open_blob(
        core,
        base64.b64decode(params["CiphertextBlob"]),
        encryption_context(params),
        ctx,
        "Decrypt",
        params.get("KeyId"),
    )
    _check_algorithm(key, params)
    _dry_run(core, key, params)
    return {
        "KeyId": key.arn,
        "Plaintext": b64(plaintext),
        "EncryptionAlgorithm": SYMMETRIC_DEFAULT,
        **_material_field(key, material_id),
    }


async def re_encrypt(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    destination = core.key(params["DestinationKeyId"], ctx)
    _check_algorithm(destination, params, "DestinationEncryptionAlgorithm")
    source, source_material, plaintext = await open_blob(
        core,
        base64.b64decode(params["CiphertextBlob"]),
        encryption_context(params, "SourceEncryptionContext"),
        ctx,
        "ReEncrypt",
        params.get("SourceKeyId"),
    )
    _check_algorithm(source, params, "SourceEncryptionAlgorithm")
    _dry_run(core, destination, params)
    blob = await seal(
        core,
        destination,
        plaintext,
        encryption_context(params, "DestinationEncryptionContext"),
        ctx,
        "ReEncrypt",
    )
    return {
        "CiphertextBlob": b64(blob),
        "SourceKeyId": source.arn,
        "KeyId": destination.arn,
        "SourceEncryptionAlgorithm": SYMMETRIC_DEFAULT,
        "DestinationEncryptionAlgorithm": SYMMETRIC_DEFAULT,
        **{f"Source{k}": v for k, v in _material_field(source, source_material).items()},
        **{
            f"Destination{k}": v
            for k, v in _material_field(destination, destination.current_material or "").items()
        },
    }


def _data_key_length(params: Params) -> int:
    spec, count = params.get("KeySpec"), params.get("NumberOfBytes")
    if (spec is None) == (count is None):
        raise errors.validation("Please specify either number of bytes or key spec.")
    return _DATA_KEY_BYTES[spec] if spec is not None else int(count or 0)


async def _data_key(
    core: Core, params: Params, ctx: Context, operation: str
) -> tuple[dict[str, Any], bytes]:
    key = core.key(params["KeyId"], ctx)
    length = _data_key_length(params)
    _dry_run(core, key, params)
    data_key = os.urandom(length)
    # The CDIV protects what the caller keeps: the encrypted data key (xks-spec §5.3).
    blob = await seal(
        core, key, data_key, encryption_context(params), ctx, operation, integrity=True
    )
    answer = {
        "CiphertextBlob": b64(blob),
        "KeyId": key.arn,
        **_material_field(key, key.current_material or ""),
    }
    return answer, data_key


async def generate_data_key(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    if params.get("Recipient") is not None:
        raise KmsError(
            "UnsupportedOperationException",
            "The emulator does not support Nitro Enclaves recipients.",
        )
    answer, data_key = await _data_key(core, params, ctx, "GenerateDataKey")
    return {**answer, "Plaintext": b64(data_key)}


async def generate_data_key_without_plaintext(
    core: Core, params: Params, ctx: Context
) -> dict[str, Any]:
    answer, _ = await _data_key(core, params, ctx, "GenerateDataKeyWithoutPlaintext")
    return answer


async def generate_random(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    if params.get("CustomKeyStoreId") is not None:
        core.store(params["CustomKeyStoreId"], ctx)
        raise KmsError(
            "UnsupportedOperationException",
            "GenerateRandom in a custom key store needs an AWS CloudHSM key store.",
        )
    count = params.get("NumberOfBytes")
    if count is None:
        raise errors.constraint(None, "numberOfBytes", "not be null")
    return {"Plaintext": b64(os.urandom(count))}
