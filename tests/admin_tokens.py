"""Signing keys, JWKS documents and tokens for the admin authentication tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ISSUER = "https://idp.example.com/"
AUDIENCE = "xks-proxy-admin"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def jwks(**keys: PrivateKey) -> str:
    """A JWKS document of the public halves, each under its ``kid``."""
    entries = []
    for kid, key in keys.items():
        public = key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = jwt.algorithms.OKPAlgorithm.to_jwk(public, as_dict=True)
        entries.append({**jwk, "kid": kid.replace("_", "-")})
    return json.dumps({"keys": entries})


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    document: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice@example.com",
        "iat": now,
        "exp": now + 300,
        "roles": ["viewer"],
    }
    document.update(changes)
    return {name: value for name, value in document.items() if value is not None}


def mint(key: PrivateKey, algorithm: str, kid: str | None, **changes: Any) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(**changes), key, algorithm=algorithm, headers=headers)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        [
            b64url(json.dumps(header).encode()),
            b64url(json.dumps(payload).encode()),
            b64url(signature),
        ]
    )


def hs256_with(secret: bytes, kid: str, **changes: Any) -> str:
    """The algorithm-confusion token: HMAC-SHA256 keyed with (say) the public key's PEM."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = b64url(json.dumps(claims(**changes)).encode())
    signing_input = f"{header}.{payload}".encode()
    return f"{header}.{payload}.{b64url(hmac.new(secret, signing_input, hashlib.sha256).digest())}"


def with_payload(token: str, **changes: Any) -> str:
    """The same header and signature over a changed payload."""
    header, payload, signature = token.split(".")
    document = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    document.update(changes)
    return f"{header}.{b64url(json.dumps(document).encode())}.{signature}"
