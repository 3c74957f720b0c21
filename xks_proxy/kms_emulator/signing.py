"""Sign and Verify for every signing key spec, as AWS KMS signs.

- RSA: RSASSA_PKCS1_V1_5_* and RSASSA_PSS_* (salt length = digest length); ECC: ECDSA (DER).
  MessageType RAW hashes the message; DIGEST takes the caller's digest, whose length must match.
- ECC_NIST_EDWARDS25519: ED25519_SHA_512 over the RAW message (pure Ed25519). The pre-hash
  variant ED25519_PH_SHA_512 (Ed25519ph) is listed as AWS lists it but refused: the
  cryptography library has no Ed25519ph.
- ML_DSA_44/65/87: ML_DSA_SHAKE_256 over the RAW message (empty context), or EXTERNAL_MU with the
  64-byte mu the caller computed (FIPS 204 external mu).

A signature that does not verify is KMSInvalidSignatureException, as in AWS (not ``false``).
"""

from __future__ import annotations

import base64
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from xks_proxy.kms_emulator import errors
from xks_proxy.kms_emulator.asymmetric import check_algorithm, check_usage, material
from xks_proxy.kms_emulator.core import Context, Core, Params
from xks_proxy.kms_emulator.errors import KmsError
from xks_proxy.kms_emulator.key_specs import SIGN_VERIFY, SPECS, digest_of, private_key
from xks_proxy.kms_emulator.state import Key
from xks_proxy.kms_emulator.xks_client import b64

MU_BYTES = 64  # FIPS 204: mu is 512 bits


def _request(core: Core, params: Params, ctx: Context) -> tuple[Key, str, str, bytes]:
    """The key, algorithm, message type and message of a Sign or Verify request."""
    key = core.key(params["KeyId"], ctx)
    check_usage(key, SIGN_VERIFY)
    algorithm = params["SigningAlgorithm"]
    check_algorithm(key, algorithm, SPECS[key.key_spec].signing)
    core.crypto_store(key)
    if algorithm == "ED25519_PH_SHA_512":
        raise KmsError(
            "UnsupportedOperationException",
            "The emulator does not implement ED25519_PH_SHA_512 (Ed25519ph).",
        )
    message_type = params.get("MessageType") or "RAW"
    allowed = {"ML_DSA_SHAKE_256": ("RAW", "EXTERNAL_MU"), "ED25519_SHA_512": ("RAW",)}
    if message_type not in allowed.get(algorithm, ("RAW", "DIGEST")):
        raise errors.validation(f"MessageType {message_type} is not valid for {algorithm}.")
    message = base64.b64decode(params["Message"])
    if message_type == "EXTERNAL_MU" and len(message) != MU_BYTES:
        raise errors.validation(f"An EXTERNAL_MU message is {MU_BYTES} bytes.")
    if message_type == "DIGEST" and len(message) != digest_of(algorithm).digest_size:
        raise errors.validation(f"Digest is invalid length for algorithm {algorithm}.")
    return key, algorithm, message_type, message


def _hash(algorithm: str, message_type: str) -> Any:
    digest = digest_of(algorithm)
    return utils.Prehashed(digest) if message_type == "DIGEST" else digest


def _rsa_padding(algorithm: str) -> padding.AsymmetricPadding:
    if algorithm.startswith("RSASSA_PSS"):
        digest = digest_of(algorithm)
        return padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
    return padding.PKCS1v15()


async def sign(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key, algorithm, message_type, message = _request(core, params, ctx)
    private: Any = private_key(material(key))
    if isinstance(private, rsa.RSAPrivateKey):
        signature = private.sign(message, _rsa_padding(algorithm), _hash(algorithm, message_type))
    elif isinstance(private, ec.EllipticCurvePrivateKey):
        signature = private.sign(message, ec.ECDSA(_hash(algorithm, message_type)))
    elif message_type == "EXTERNAL_MU":
        signature = private.sign_mu(message)
    else:  # Ed25519 and ML-DSA sign the message itself
        signature = private.sign(message)
    return {"KeyId": key.arn, "Signature": b64(signature), "SigningAlgorithm": algorithm}


async def verify(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key, algorithm, message_type, message = _request(core, params, ctx)
    public: Any = private_key(material(key)).public_key()
    signature = base64.b64decode(params["Signature"])
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(
                signature, message, _rsa_padding(algorithm), _hash(algorithm, message_type)
            )
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, message, ec.ECDSA(_hash(algorithm, message_type)))
        elif message_type == "EXTERNAL_MU":
            public.verify_mu(signature, message)
        else:
            public.verify(signature, message)
    except InvalidSignature:
        raise KmsError("KMSInvalidSignatureException", "") from None
    return {"KeyId": key.arn, "SignatureValid": True, "SigningAlgorithm": algorithm}
