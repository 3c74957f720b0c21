"""Development admin tokens: a local Ed25519 signing key and tokens minted from it.

For ``init`` (the key pair: the private half 0600, the public half for ``[admin.auth]
public_keys``, its file name being the ``kid``) and ``xks-proxy admin token --role R [--ttl
15m]`` on a developer's machine. Production tokens come from the organisation's identity
provider (``issuers`` and ``jwks_url``); a deployment should not keep a private signing key on
the proxy host at all. Not wired into the CLI yet (issue 13 part 1).
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from xks_proxy.admin.roles import Role
from xks_proxy.credentials import write_private_file

# What ``init`` writes to ``[admin.auth]`` for its development key.
DEV_ISSUER = "xks-proxy-dev"
DEV_AUDIENCE = "xks-proxy-admin"
_DURATION = re.compile(r"([1-9][0-9]{0,5})([smh])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}
MAX_TTL_SECONDS = 86_400


def parse_ttl(text: str) -> int:
    """``90s``, ``15m``, ``8h`` → seconds, at most one day; ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"--ttl {text!r}: a number with s, m or h, e.g. 15m")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > MAX_TTL_SECONDS:
        raise ValueError(f"--ttl {text!r}: at most 24h")
    return seconds


def make_signing_key(private_path: Path, public_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private_file(private_path, private_pem.decode("ascii"))
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def mint_token(
    private_path: Path,
    *,
    kid: str,
    issuer: str,
    audience: str,
    role: Role,
    ttl_seconds: int,
    subject: str = "local-admin",
    now: float | None = None,
) -> str:
    key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{private_path}: not an Ed25519 private key")
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_seconds,
        "jti": str(uuid.uuid4()),
        "roles": [role.value],
    }
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})
