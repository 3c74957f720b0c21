"""Asymmetric and HMAC keys: GetPublicKey, GenerateMac/VerifyMac, RSA encryption,
DeriveSharedSecret (ECDH with a NIST-curve KEY_AGREEMENT key, the raw shared secret as AWS
returns it), and GenerateDataKeyPair(WithoutPlaintext) under a symmetric key. Sign and Verify
are in ``signing``, Encapsulate and Decapsulate in ``kem``.

As in AWS KMS: RSA ciphertexts are the raw OAEP output, so Decrypt needs KeyId and
EncryptionAlgorithm; a failed MAC verification is KMSInvalidMacException, not ``false``. Data
key pairs are made fresh; the private key is sealed under the symmetric key exactly like a data
key (so a key in an external key store works too) and returned as PKCS#8 DER.
"""

from __future__ import annotations

import base64
import hmac
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from xks_proxy.kms_emulator import errors
from xks_proxy.kms_emulator.core import Context, Core, Params
from xks_proxy.kms_emulator.errors import KmsError
from xks_proxy.kms_emulator.key_specs import (
    ENCRYPT_DECRYPT,
    GENERATE_VERIFY_MAC,
    KEY_AGREEMENT,
    SPECS,
    SYMMETRIC_DEFAULT,
    digest_of,
    legacy_spec,
    private_key,
    public_der,
)
from xks_proxy.kms_emulator.layers import encryption_context, seal
from xks_proxy.kms_emulator.state import Key
from xks_proxy.kms_emulator.xks_client import b64, unb64


def check_usage(key: Key, usage: str) -> None:
    if key.key_usage != usage:
        raise KmsError(
            "InvalidKeyUsageException",
            f"{key.arn} key usage is {key.key_usage} which is not valid for this operation.",
        )


def check_algorithm(key: Key, algorithm: str, allowed: tuple[str, ...]) -> None:
    if algorithm not in allowed:
        raise KmsError(
            "InvalidKeyUsageException",
            f"Algorithm {algorithm} is incompatible with key spec {key.key_spec}.",
        )


def material(key: Key) -> bytes:
    assert key.current_material is not None
    return unb64(key.materials[key.current_material])


def _oaep(algorithm: str) -> padding.OAEP:
    digest = digest_of(algorithm)
    return padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)


def rsa_encrypt(key: Key, plaintext: bytes, algorithm: str) -> bytes:
    private = private_key(material(key))
    assert isinstance(private, rsa.RSAPrivateKey)
    limit = private.key_size // 8 - 2 * digest_of(algorithm).digest_size - 2
    if len(plaintext) > limit:
        raise errors.validation(
            f"Plaintext for {key.key_spec} with {algorithm} must be at most {limit} bytes."
        )
    return private.public_key().encrypt(plaintext, _oaep(algorithm))


def rsa_decrypt(key: Key, ciphertext: bytes, algorithm: str) -> bytes:
    private = private_key(material(key))
    assert isinstance(private, rsa.RSAPrivateKey)
    try:
        return private.decrypt(ciphertext, _oaep(algorithm))
    except ValueError:
        raise KmsError("InvalidCiphertextException", "") from None


async def get_public_key(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key = core.key(params["KeyId"], ctx)
    spec = SPECS[key.key_spec]
    if not spec.asymmetric:
        raise KmsError(
            "UnsupportedOperationException",
            f"{key.arn} key spec is {key.key_spec}, which has no public key.",
        )
    core.crypto_store(key)  # the key-state table treats GetPublicKey as a cryptographic call
    return {
        "KeyId": key.arn,
        "PublicKey": b64(public_der(material(key))),
        **legacy_spec(key.key_spec),
        "KeySpec": key.key_spec,
        "KeyUsage": key.key_usage,
        **spec.algorithms(key.key_usage),
    }


def _mac(core: Core, params: Params, ctx: Context) -> tuple[Key, str, bytes]:
    key = core.key(params["KeyId"], ctx)
    check_usage(key, GENERATE_VERIFY_MAC)
    algorithm = params["MacAlgorithm"]
    check_algorithm(key, algorithm, SPECS[key.key_spec].mac)
    core.crypto_store(key)
    digest = digest_of(algorithm).name  # "sha256" …, as hmac.new wants it
    return (
        key,
        algorithm,
        hmac.new(material(key), base64.b64decode(params["Message"]), digest).digest(),
    )


async def generate_mac(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key, algorithm, mac = _mac(core, params, ctx)
    return {"Mac": b64(mac), "MacAlgorithm": algorithm, "KeyId": key.arn}


async def verify_mac(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key, algorithm, mac = _mac(core, params, ctx)
    if not hmac.compare_digest(mac, base64.b64decode(params["Mac"])):
        raise KmsError("KMSInvalidMacException", "")
    return {"KeyId": key.arn, "MacValid": True, "MacAlgorithm": algorithm}


async def _data_key_pair(
    core: Core, params: Params, ctx: Context, operation: str
) -> tuple[dict[str, Any], bytes]:
    key = core.key(params["KeyId"], ctx)
    if key.key_spec != SYMMETRIC_DEFAULT:
        raise KmsError(
            "InvalidKeyUsageException",
            f"{key.arn} key spec is {key.key_spec}: data key pairs are encrypted "
            "under a symmetric encryption key.",
        )
    check_usage(key, ENCRYPT_DECRYPT)
    pair_spec = SPECS.get(params["KeyPairSpec"])
    if pair_spec is None or not pair_spec.asymmetric:
        raise KmsError(
            "UnsupportedOperationException",
            f"The emulator does not make {params['KeyPairSpec']} key pairs.",
        )
    if params.get("Recipient") is not None:
        raise KmsError(
            "UnsupportedOperationException",
            "The emulator does not support Nitro Enclaves recipients.",
        )
    private = pair_spec.generate()
    blob = await seal(
        core, key, private, encryption_context(params), ctx, operation, integrity=True
    )
    answer = {
        "PrivateKeyCiphertextBlob": b64(blob),
        "PublicKey": b64(public_der(private)),
        "KeyId": key.arn,
        "KeyPairSpec": pair_spec.name,
    }
    if key.key_store_id is None:
        answer["KeyMaterialId"] = key.current_material or ""
    return answer, private


async def generate_data_key_pair(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    answer, private = await _data_key_pair(core, params, ctx, "GenerateDataKeyPair")
    return {**answer, "PrivateKeyPlaintext": b64(private)}


async def generate_data_key_pair_without_plaintext(
    core: Core, params: Params, ctx: Context
) -> dict[str, Any]:
    answer, _ = await _data_key_pair(core, params, ctx, "GenerateDataKeyPairWithoutPlaintext")
    return answer


async def derive_shared_secret(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key = core.key(params["KeyId"], ctx)
    check_usage(key, KEY_AGREEMENT)
    check_algorithm(key, params["KeyAgreementAlgorithm"], ("ECDH",))
    if params.get("Recipient") is not None:
        raise KmsError(
            "UnsupportedOperationException",
            "The emulator does not support Nitro Enclaves recipients.",
        )
    core.crypto_store(key)
    private = private_key(material(key))
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    try:
        peer = serialization.load_der_public_key(base64.b64decode(params["PublicKey"]))
    except ValueError:
        raise errors.validation("PublicKey is not a DER-encoded SubjectPublicKeyInfo.") from None
    if not isinstance(peer, ec.EllipticCurvePublicKey) or peer.curve.name != private.curve.name:
        raise KmsError(
            "InvalidKeyUsageException",
            f"The public key is not on the curve of {key.arn} ({key.key_spec}).",
        )
    return {
        "KeyId": key.arn,
        "SharedSecret": b64(private.exchange(ec.ECDH(), peer)),
        "KeyAgreementAlgorithm": "ECDH",
        "KeyOrigin": key.origin.value,
    }
