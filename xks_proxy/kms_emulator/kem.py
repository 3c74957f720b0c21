"""Encapsulate and Decapsulate with ML-KEM keys (ML_KEM_768, ML_KEM_1024; ENCAPSULATE_DECAPSULATE).

Encapsulate makes a fresh 32-byte shared secret and its ciphertext under the key's public half;
Decapsulate recovers the secret. ML-KEM rejects a wrong ciphertext implicitly (FIPS 203: it
yields an unrelated secret, not an error), so only a ciphertext of the wrong length is
InvalidCiphertextException, as the algorithm itself behaves.
"""

from __future__ import annotations

import base64
from typing import Any

from cryptography.hazmat.primitives.asymmetric import mlkem

from xks_proxy.kms_emulator.asymmetric import check_algorithm, check_usage, material
from xks_proxy.kms_emulator.core import Context, Core, Params
from xks_proxy.kms_emulator.errors import KmsError
from xks_proxy.kms_emulator.key_specs import ENCAPSULATE_DECAPSULATE, private_key
from xks_proxy.kms_emulator.state import Key
from xks_proxy.kms_emulator.xks_client import b64


def _kem_key(core: Core, params: Params, ctx: Context) -> tuple[Key, Any]:
    key = core.key(params["KeyId"], ctx)
    check_usage(key, ENCAPSULATE_DECAPSULATE)
    check_algorithm(key, params["EncapsulationAlgorithm"], ("ML_KEM",))
    core.crypto_store(key)
    private = private_key(material(key))
    assert isinstance(private, mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey)
    return key, private


async def encapsulate(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key, private = _kem_key(core, params, ctx)
    secret, ciphertext = private.public_key().encapsulate()
    return {
        "KeyId": key.arn,
        "SharedSecret": b64(secret),
        "SharedSecretCiphertextBlob": b64(ciphertext),
        "EncapsulationAlgorithm": "ML_KEM",
    }


async def decapsulate(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key, private = _kem_key(core, params, ctx)
    try:
        secret = private.decapsulate(base64.b64decode(params["SharedSecretCiphertextBlob"]))
    except ValueError:
        raise KmsError("InvalidCiphertextException", "") from None
    return {"KeyId": key.arn, "SharedSecret": b64(secret), "EncapsulationAlgorithm": "ML_KEM"}
