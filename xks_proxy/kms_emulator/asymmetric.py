"""Asymmetric and HMAC keys: Sign/Verify, GetPublicKey, GenerateMac/VerifyMac, RSA
encryption, DeriveSharedSecret (ECDH with a NIST-curve KEY_AGREEMENT key, the raw shared
secret as AWS returns it), and GenerateDataKeyPair(WithoutPlaintext) under a symmetric key.

As in AWS KMS: signatures are DER ECDSA or PKCS#1 v1.5 / PSS (salt length = digest length)
over the message (RAW) or over a digest the caller made (DIGEST: its length must match); RSA
ciphertexts are the raw OAEP output, so Decrypt needs KeyId and EncryptionAlgorithm; a failed
verification is KMSInvalidSignatureException / KMSInvalidMacException, not ``false``. Data key
pairs are made fresh; the private key is sealed under the symmetric key exactly like a data key
(so a key in an external key store works too) and returned as PKCS#8 DER.
"""

from __future__ import annotations

import base64
import hmac
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from xks_proxy.kms_emulator import errors
from xks_proxy.kms_emulator.core import Context, Core, Params
from xks_proxy.kms_emulator.errors import KmsError
from xks_proxy.kms_emulator.key_specs import (
    ENCRYPT_DECRYPT,
    GENERATE_VERIFY_MAC,
    KEY_AGREEMENT,
    SIGN_VERIFY,
    SPECS,
    SYMMETRIC_DEFAULT,
    digest_of,
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


def _material(key: Key) -> bytes:
    assert key.current_material is not None
    return unb64(key.materials[key.current_material])


def _oaep(algorithm: str) -> padding.OAEP:
    digest = digest_of(algorithm)
    return padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)


def rsa_encrypt(key: Key, plaintext: bytes, algorithm: str) -> bytes:
    private = private_key(_material(key))
    assert isinstance(private, rsa.RSAPrivateKey)
    limit = private.key_size // 8 - 2 * digest_of(algorithm).digest_size - 2
    if len(plaintext) > limit:
        raise errors.validation(
            f"Plaintext for {key.key_spec} with {algorithm} must be at most {limit} bytes."
        )
    return private.public_key().encrypt(plaintext, _oaep(algorithm))


def rsa_decrypt(key: Key, ciphertext: bytes, algorithm: str) -> bytes:
    private = private_key(_material(key))
    assert isinstance(private, rsa.RSAPrivateKey)
    try:
        return private.decrypt(ciphertext, _oaep(algorithm))
    except ValueError:
        raise KmsError("InvalidCiphertextException", "") from None


def _signing_key(core: Core, params: Params, ctx: Context) -> tuple[Key, str, bytes, Any]:
    """The key, algorithm, message and the hash argument ``cryptography`` wants."""
    key = core.key(params["KeyId"], ctx)
    check_usage(key, SIGN_VERIFY)
    algorithm = params["SigningAlgorithm"]
    check_algorithm(key, algorithm, SPECS[key.key_spec].signing)
    core.crypto_store(key)
    message = base64.b64decode(params["Message"])
    digest: hashes.HashAlgorithm = digest_of(algorithm)
    if (params.get("MessageType") or "RAW") == "DIGEST":
        if len(message) != digest.digest_size:
            raise errors.validation(f"Digest is invalid length for algorithm {algorithm}.")
        return key, algorithm, message, utils.Prehashed(digest)
    return key, algorithm, message, digest


def _rsa_padding(algorithm: str) -> padding.AsymmetricPadding:
    if algorithm.startswith("RSASSA_PSS"):
        digest = digest_of(algorithm)
        return padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
    return padding.PKCS1v15()


async def sign(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key, algorithm, message, digest = _signing_key(core, params, ctx)
    private = private_key(_material(key))
    if isinstance(private, rsa.RSAPrivateKey):
        signature = private.sign(message, _rsa_padding(algorithm), digest)
    else:
        signature = private.sign(message, ec.ECDSA(digest))
    return {"KeyId": key.arn, "Signature": b64(signature), "SigningAlgorithm": algorithm}


async def verify(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key, algorithm, message, digest = _signing_key(core, params, ctx)
    public = private_key(_material(key)).public_key()
    signature = base64.b64decode(params["Signature"])
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, message, _rsa_padding(algorithm), digest)
        else:
            public.verify(signature, message, ec.ECDSA(digest))
    except InvalidSignature:
        raise KmsError("KMSInvalidSignatureException", "") from None
    return {"KeyId": key.arn, "SignatureValid": True, "SigningAlgorithm": algorithm}


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
        "PublicKey": b64(public_der(_material(key))),
        "CustomerMasterKeySpec": key.key_spec,
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
        hmac.new(_material(key), base64.b64decode(params["Message"]), digest).digest(),
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
    private = private_key(_material(key))
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
