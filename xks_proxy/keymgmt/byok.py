"""Imported key material (BYOK), modelled on KMS's GetParametersForImport / ImportKeyMaterial.

- ``keys create --origin external`` makes a key without material: DISABLED until an import.
- ``keys import-parameters`` makes an RSA wrapping key (RSA_2048 by default, or RSA_3072 /
  RSA_4096), seals its private half in the store under the KEK, bound to the key id, and gives
  the public half (PEM) and an import token. The token is a JWT (pyjwt, EdDSA) signed with the
  store's own Ed25519 key, which is made on first use and kept sealed in the store under the KEK
  (so every host of a fleet, sharing the store and KEK, verifies it, and a token from another
  store does not verify). It binds the key id (``sub``), the wrapping key (``jti`` names its row;
  ``wrappingKeySha256`` is the SHA-256 of its DER SubjectPublicKeyInfo) and the algorithm, and
  expires after 24 hours, as in KMS. Expired wrapping keys are deleted by every proxy's sweeper.
- ``keys import`` unwraps (RSAES_OAEP_SHA_256: RSA-OAEP with SHA-256 and MGF1-SHA-256;
  RSA_AES_KEY_WRAP_SHA_256: the same RSA-OAEP of an ephemeral AES-256 key, followed by the
  material under AES key wrap with padding, RFC 5649), accepts exactly 32 bytes, and consumes
  the wrapping key in the same transaction, so a token works once. A key that had material
  takes only the same material again (KMS's rule), checked against a fingerprint kept in the
  store: SHA-256 over a domain label, the key id and the material (a 256-bit random key cannot
  be recovered from it; it survives ``delete-material`` so the rule does too).
- ``--valid-to``: as KMS's ValidTo, in the future and at most 365 days ahead; from that instant
  the key is DISABLED (each request compares the time, so a running proxy refuses at once), and
  the sweeper (once a minute) deletes the material.
- ``keys delete-material`` deletes the material at once; the key stays, DISABLED.
- Imported keys cannot be rotated (``KeyDatabase.rotate_key`` says so).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding

from xks_proxy.errors import ConfigError
from xks_proxy.keymgmt.limits import WRAPPING_ALGORITHMS, WRAPPING_KEY_BITS
from xks_proxy.keystore.imported import SIGNING_KEY_NAME, ImportedMaterial, iso
from xks_proxy.keystore.sealing import KEY_BYTES
from xks_proxy.keystore.store import KeyDatabase

TOKEN_LIFETIME = timedelta(hours=24)  # as KMS's import tokens and wrapping keys
# KMS ImportKeyMaterial: "ValidTo must be a future date and time. The maximum value is 365 days
# from the request date."
MAX_VALIDITY = timedelta(days=365)
TOKEN_ISSUER = "xks-proxy key import"  # noqa: S105 (the JWT iss claim, not a secret)
_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


class ImportRefusedError(ValueError):
    """The token, the wrapped material or the request is not acceptable; the message says why."""


@dataclass(frozen=True)
class ImportParameters:
    public_key_pem: bytes
    token: str
    expires_at: datetime


def parse_valid_to(text: str, name: str) -> datetime:
    """An ISO 8601 instant with a time zone (``--valid-to`` of the CLI, ``validTo`` of the API):
    a naive one would mean a different instant on every host."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{name}: not an ISO 8601 date and time: {text[:64]!r}") from None
    if when.tzinfo is None:
        raise ConfigError(f"{name}: give a time zone, e.g. 2027-01-31T00:00:00Z")
    return when


def material_fingerprint(key_id: str, material: bytes) -> str:
    return hashlib.sha256(
        b"xks-proxy imported material\0" + key_id.encode() + b"\0" + material
    ).hexdigest()


def _public_fingerprint(private: rsa.RSAPrivateKey) -> str:
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _signing_key(imported: ImportedMaterial) -> Ed25519PrivateKey:
    found = imported.secret(SIGNING_KEY_NAME)
    if found is not None:
        return Ed25519PrivateKey.from_private_bytes(found[1])
    fresh = Ed25519PrivateKey.generate().private_bytes_raw()
    return Ed25519PrivateKey.from_private_bytes(imported.add_secret(SIGNING_KEY_NAME, fresh))


def import_parameters(
    database: KeyDatabase, key_id: str, algorithm: str, spec: str, now: datetime
) -> ImportParameters:
    if algorithm not in WRAPPING_ALGORITHMS:
        raise ImportRefusedError(f"wrapping algorithm: one of {', '.join(WRAPPING_ALGORITHMS)}")
    if spec not in WRAPPING_KEY_BITS:
        raise ImportRefusedError(f"wrapping key spec: one of {', '.join(WRAPPING_KEY_BITS)}")
    imported = ImportedMaterial(database)
    imported.check_external(key_id)
    signing = _signing_key(imported)
    private = rsa.generate_private_key(public_exponent=65537, key_size=WRAPPING_KEY_BITS[spec])
    expires = now + TOKEN_LIFETIME
    name = f"wrapping-key {secrets.token_hex(16)}"
    der = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    imported.add_secret(name, der, key_id=key_id, expires_at=iso(expires))
    claims = {
        "iss": TOKEN_ISSUER,
        "sub": key_id,
        "jti": name,
        "iat": now,
        "exp": expires,
        "wrappingAlgorithm": algorithm,
        "wrappingKeySpec": spec,
        "wrappingKeySha256": _public_fingerprint(private),
    }
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return ImportParameters(pem, jwt.encode(claims, signing, algorithm="EdDSA"), expires)


def _claims(imported: ImportedMaterial, token: str) -> dict[str, str]:
    found = imported.secret(SIGNING_KEY_NAME)
    if found is None:
        raise ImportRefusedError("this key store never issued an import token")
    public = Ed25519PrivateKey.from_private_bytes(found[1]).public_key()
    try:
        claims: dict[str, str] = jwt.decode(
            token.strip(), public, algorithms=["EdDSA"], issuer=TOKEN_ISSUER,
            options={"require": ["exp", "iat", "sub", "jti", "iss"]},
        )  # fmt: skip
    except jwt.ExpiredSignatureError:
        raise ImportRefusedError(
            "the import token has expired (they last 24 hours): run `keys import-parameters` again"
        ) from None
    except jwt.InvalidTokenError as error:
        raise ImportRefusedError(
            f"the import token is not valid for this key store: {error}"
        ) from None
    return claims


def _unwrap(private: rsa.RSAPrivateKey, algorithm: str, wrapped: bytes) -> bytes:
    try:
        if algorithm == "RSA_AES_KEY_WRAP_SHA_256":
            rsa_bytes = private.key_size // 8
            ephemeral = private.decrypt(wrapped[:rsa_bytes], _OAEP)
            return aes_key_unwrap_with_padding(ephemeral, wrapped[rsa_bytes:])
        return private.decrypt(wrapped, _OAEP)
    except (ValueError, InvalidUnwrap):
        raise ImportRefusedError(
            f"the key material does not unwrap with this token's wrapping key and {algorithm}"
        ) from None


def import_material(
    database: KeyDatabase, key_id: str, wrapped: bytes, token: str, valid_to: datetime | None,
    now: datetime,
) -> str:  # fmt: skip
    """Install the unwrapped material; returns the wrapping algorithm the token named."""
    if valid_to is not None and valid_to <= now:
        raise ImportRefusedError(f"--valid-to {valid_to.isoformat()} is not in the future")
    if valid_to is not None and valid_to > now + MAX_VALIDITY:
        raise ImportRefusedError(
            f"--valid-to {valid_to.isoformat()} is more than 365 days ahead (KMS's limit for "
            "imported key material); import again before then to extend it"
        )
    imported = ImportedMaterial(database)
    claims = _claims(imported, token)
    if claims["sub"] != key_id:
        raise ImportRefusedError(f"the import token is for key {claims['sub']}, not {key_id}")
    found = imported.secret(claims["jti"])
    if found is None or found[0] != key_id or (found[2] or "") <= iso(now):
        raise ImportRefusedError(
            "the import token was used already or has expired: run `keys import-parameters` again"
        )
    private = serialization.load_der_private_key(found[1], password=None)
    if not isinstance(private, rsa.RSAPrivateKey) or _public_fingerprint(private) != claims.get(
        "wrappingKeySha256"
    ):
        raise ImportRefusedError("the import token does not name this store's wrapping key")
    algorithm = claims.get("wrappingAlgorithm", "")
    if algorithm not in WRAPPING_ALGORITHMS:
        raise ImportRefusedError(f"the import token names an unknown algorithm {algorithm!r}")
    material = _unwrap(private, algorithm, wrapped)
    if len(material) != KEY_BYTES:
        raise ImportRefusedError(
            f"the key material is {len(material)} bytes; an AES-256 key is exactly {KEY_BYTES}"
        )
    imported.install(
        key_id, claims["jti"], material, material_fingerprint(key_id, material),
        iso(valid_to) if valid_to is not None else None, now,
    )  # fmt: skip
    return algorithm
