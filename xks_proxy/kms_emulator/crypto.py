"""Encryption operations: Encrypt, Decrypt, ReEncrypt (symmetric keys, and RSA keys with
RSAES_OAEP_*), GenerateDataKey*, GenerateRandom. Sizes and types were checked against the
service model before a handler runs.

``DryRun`` runs every check (key, state, parameters) and then answers
DryRunOperationException instead of encrypting, as AWS does. Grant tokens are accepted.
``KeyMaterialId`` fields are present for symmetric keys whose material KMS holds (not for keys
in an external key store, whose material is in the external key manager). An RSA ciphertext
names no key: decrypting it needs KeyId and EncryptionAlgorithm, and an encryption context is
refused for it (RSA has no AAD).
"""

from __future__ import annotations

import base64
import os
from typing import Any

from xks_proxy.kms_emulator import errors
from xks_proxy.kms_emulator.asymmetric import check_algorithm, check_usage, rsa_decrypt, rsa_encrypt
from xks_proxy.kms_emulator.core import Context, Core, Params
from xks_proxy.kms_emulator.errors import KmsError
from xks_proxy.kms_emulator.key_specs import ENCRYPT_DECRYPT, SPECS, SYMMETRIC_DEFAULT
from xks_proxy.kms_emulator.layers import encryption_context, open_blob, seal
from xks_proxy.kms_emulator.state import Key, Origin
from xks_proxy.kms_emulator.xks_client import b64

_DATA_KEY_BYTES = {"AES_256": 32, "AES_128": 16}


def _dry_run(core: Core, key: Key, params: Params) -> None:
    """With DryRun, stop after every check has passed, the key's usability included."""
    if params.get("DryRun"):
        core.crypto_store(key)
        raise KmsError(
            "DryRunOperationException",
            "The request would have succeeded, but the DryRun option is set.",
        )


def _no_recipient(params: Params) -> None:
    if params.get("Recipient") is not None:
        raise KmsError(
            "UnsupportedOperationException",
            "The emulator does not support Nitro Enclaves recipients.",
        )


def _material_field(key: Key, material_id: str | None) -> dict[str, str]:
    if key.origin == Origin.EXTERNAL_KEY_STORE or material_id is None:
        return {}
    return {"KeyMaterialId": material_id}


def _asymmetric_context(params: Params, member: str) -> None:
    if params.get(member):
        raise errors.validation(f"{member} is not supported with asymmetric KMS keys.")


async def _encrypt(
    core: Core,
    key: Key,
    plaintext: bytes,
    params: Params,
    ctx: Context,
    operation: str,
    *,
    algorithm_member: str,
    context_member: str,
) -> tuple[bytes, str]:
    """The ciphertext of ``plaintext`` under ``key`` and the algorithm used."""
    check_usage(key, ENCRYPT_DECRYPT)
    algorithm = params.get(algorithm_member) or SYMMETRIC_DEFAULT
    check_algorithm(key, algorithm, SPECS[key.key_spec].encryption)
    _dry_run(core, key, params)
    if algorithm == SYMMETRIC_DEFAULT:
        context = encryption_context(params, context_member)
        return await seal(core, key, plaintext, context, ctx, operation), algorithm
    _asymmetric_context(params, context_member)
    core.crypto_store(key)
    return rsa_encrypt(key, plaintext, algorithm), algorithm


async def _decrypt(
    core: Core,
    params: Params,
    ctx: Context,
    operation: str,
    *,
    key_member: str,
    algorithm_member: str,
    context_member: str,
) -> tuple[Key, str | None, bytes, str]:
    """The key, KeyMaterialId (symmetric keys), plaintext and algorithm of a ciphertext."""
    if params.get("CiphertextBlob") is None:  # optional in Decrypt's model (for Recipient)
        raise errors.constraint(None, "ciphertextBlob", "not be null")
    raw = base64.b64decode(params["CiphertextBlob"])
    algorithm = params.get(algorithm_member) or SYMMETRIC_DEFAULT
    key_ref = params.get(key_member)
    if algorithm != SYMMETRIC_DEFAULT:
        if key_ref is None:
            raise errors.validation(f"{key_member} is required to decrypt with {algorithm}.")
        key = core.key(key_ref, ctx)
        check_usage(key, ENCRYPT_DECRYPT)
        check_algorithm(key, algorithm, SPECS[key.key_spec].encryption)
        _asymmetric_context(params, context_member)
        core.crypto_store(key)
        return key, None, rsa_decrypt(key, raw, algorithm), algorithm
    context = encryption_context(params, context_member)
    key, material_id, plaintext = await open_blob(core, raw, context, ctx, operation, key_ref)
    return key, material_id, plaintext, algorithm


async def encrypt(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key = core.key(params["KeyId"], ctx)
    blob, algorithm = await _encrypt(
        core,
        key,
        base64.b64decode(params["Plaintext"]),
        params,
        ctx,
        "Encrypt",
        algorithm_member="EncryptionAlgorithm",
        context_member="EncryptionContext",
    )
    return {"CiphertextBlob": b64(blob), "KeyId": key.arn, "EncryptionAlgorithm": algorithm}


async def decrypt(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    _no_recipient(params)
    key, material_id, plaintext, algorithm = await _decrypt(
        core,
        params,
        ctx,
        "Decrypt",
        key_member="KeyId",
        algorithm_member="EncryptionAlgorithm",
        context_member="EncryptionContext",
    )
    _dry_run(core, key, params)
    return {
        "KeyId": key.arn,
        "Plaintext": b64(plaintext),
        "EncryptionAlgorithm": algorithm,
        **_material_field(key, material_id),
    }


async def re_encrypt(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    destination = core.key(params["DestinationKeyId"], ctx)
    source, source_material, plaintext, source_algorithm = await _decrypt(
        core,
        params,
        ctx,
        "ReEncrypt",
        key_member="SourceKeyId",
        algorithm_member="SourceEncryptionAlgorithm",
        context_member="SourceEncryptionContext",
    )
    blob, algorithm = await _encrypt(
        core,
        destination,
        plaintext,
        params,
        ctx,
        "ReEncrypt",
        algorithm_member="DestinationEncryptionAlgorithm",
        context_member="DestinationEncryptionContext",
    )
    destination_material = destination.current_material if algorithm == SYMMETRIC_DEFAULT else None
    return {
        "CiphertextBlob": b64(blob),
        "SourceKeyId": source.arn,
        "KeyId": destination.arn,
        "SourceEncryptionAlgorithm": source_algorithm,
        "DestinationEncryptionAlgorithm": algorithm,
        **{f"Source{k}": v for k, v in _material_field(source, source_material).items()},
        **{
            f"Destination{k}": v
            for k, v in _material_field(destination, destination_material).items()
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
    if key.key_spec != SYMMETRIC_DEFAULT:
        raise KmsError(
            "InvalidKeyUsageException",
            f"{key.arn} key spec is {key.key_spec}: data keys are encrypted under a "
            "symmetric encryption key.",
        )
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
        **_material_field(key, key.current_material),
    }
    return answer, data_key


async def generate_data_key(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    _no_recipient(params)
    answer, data_key = await _data_key(core, params, ctx, "GenerateDataKey")
    return {**answer, "Plaintext": b64(data_key)}


async def generate_data_key_without_plaintext(
    core: Core, params: Params, ctx: Context
) -> dict[str, Any]:
    answer, _ = await _data_key(core, params, ctx, "GenerateDataKeyWithoutPlaintext")
    return answer


async def generate_random(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    _no_recipient(params)
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
