"""Bearer JWT verification for the admin API (pyjwt).

A token is accepted only when all of these hold; anything else is ``AuthenticationError`` (401),
never another exception:

- at most ``MAX_TOKEN_BYTES`` of three Base64url parts, whose header names RS256, ES256 or EdDSA
  (``alg: none`` and every HMAC algorithm are refused before a key is looked at);
- a key from ``KeySource`` whose type matches that algorithm verifies the signature (so a
  payload changed after signing fails, and an HS256 token "signed" with the public key fails);
- ``iss`` is one of the configured issuers, ``aud`` contains the configured audience, ``sub`` is
  present, ``exp`` is in the future, ``nbf`` (when present) and ``iat`` are not, each with
  ``leeway_seconds`` of clock skew (default 30 s), and ``exp - iat`` is at most
  ``max_lifetime_seconds`` (default one day: a long-lived admin token is a standing credential).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

from xks_proxy.admin.errors import AuthenticationError
from xks_proxy.admin.keys import ALGORITHMS, KeySource

MAX_TOKEN_BYTES = 8192
DEFAULT_LEEWAY_SECONDS = 30
DEFAULT_MAX_LIFETIME_SECONDS = 86_400
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token says the caller is."""

    issuer: str
    subject: str
    claims: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    issuers: tuple[str, ...]
    audience: str
    leeway_seconds: int = DEFAULT_LEEWAY_SECONDS
    max_lifetime_seconds: int = DEFAULT_MAX_LIFETIME_SECONDS


class TokenVerifier:
    def __init__(self, policy: TokenPolicy, keys: KeySource) -> None:
        if not policy.issuers or not policy.audience:
            raise ValueError("token verification needs at least one issuer and an audience")
        self.policy = policy
        self.keys = keys

    def verify(self, token: str) -> Identity:
        """The token's identity, or ``AuthenticationError`` saying why not (for the log)."""
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthenticationError("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise AuthenticationError(f"malformed token ({error})") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise AuthenticationError(f"algorithm {str(algorithm)[:16]!r} is not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthenticationError("kid is not a string")
        candidates = [c for c in self.keys.candidates(kid) if c.algorithm == algorithm]
        if not candidates:
            raise AuthenticationError(f"no {algorithm} key for kid {str(kid)[:64]!r}")
        failure: jwt.PyJWTError | None = None
        for candidate in candidates:
            try:
                claims = self._decode(token, candidate.key, candidate.algorithm)
            except jwt.InvalidSignatureError as error:
                failure = error  # another key without kid may still verify it
                continue
            except jwt.PyJWTError as error:
                raise AuthenticationError(f"rejected: {error}") from None
            return self._identity(claims)
        raise AuthenticationError(f"rejected: {failure}")

    def _decode(self, token: str, key: Any, algorithm: str) -> dict[str, Any]:
        policy = self.policy
        claims: dict[str, Any] = jwt.decode(
            token,
            key=key,
            algorithms=[algorithm],
            audience=policy.audience,
            issuer=list(policy.issuers),
            leeway=policy.leeway_seconds,
            options={"require": list(REQUIRED_CLAIMS), "strict_aud": False},
        )
        return claims

    def _identity(self, claims: dict[str, Any]) -> Identity:
        issuer, subject = claims["iss"], claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise AuthenticationError("sub must be a non-empty string")
        lifetime = int(claims["exp"]) - int(claims["iat"])
        if lifetime > self.policy.max_lifetime_seconds:
            raise AuthenticationError(f"token lifetime {lifetime} s over the maximum")
        return Identity(issuer=issuer, subject=subject, claims=claims)
