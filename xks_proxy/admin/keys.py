"""Where the admin API's token verification keys come from: PEM files, a JWKS file, a JWKS URL.

- PEM files: public keys, each known by its file name without the extension as its ``kid``. A
  token with a ``kid`` header uses that key; a token without one is tried against each PEM key
  (a deployment has one or two).
- A JWKS file: read once (a reload reads it again); keys are found by ``kid``.
- A JWKS URL (the identity provider's ``jwks_uri``): ``PyJWKClient`` keeps the set for
  ``JWKS_LIFESPAN_SECONDS`` and fetches it again when a token names an unknown ``kid`` (key
  rotation at the provider), but not within ``JWKS_REFETCH_COOLDOWN_SECONDS`` of the last fetch,
  so that tokens with made-up ``kid`` values cannot make the proxy hammer the provider. A
  provider that cannot be reached makes its tokens unverifiable: 401, as for any bad token.

A key is only ever used with the algorithm of its type (RSA → RS256, P-256 → ES256, Ed25519 →
EdDSA), whatever the token's header claims, so an RSA public key can never become an HMAC
secret (the algorithm-confusion attack).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from xks_proxy.admin.errors import AuthenticationError

# The only algorithms accepted (issue 13): asymmetric, so the proxy holds no signing secret.
ALGORITHMS = ("RS256", "ES256", "EdDSA")
JWKS_LIFESPAN_SECONDS = 300
JWKS_REFETCH_COOLDOWN_SECONDS = 30
JWKS_FETCH_TIMEOUT_SECONDS = 5
MIN_RSA_BITS = 2048

VerificationKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def algorithm_of(key: object) -> str | None:
    """The one algorithm a public key may verify, or None for a key this proxy does not use."""
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS:
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    return None


@dataclass(frozen=True, slots=True)
class Candidate:
    key: VerificationKey
    algorithm: str


def _candidate(key: object, where: str) -> Candidate:
    algorithm = algorithm_of(key)
    if algorithm is None:
        raise ValueError(f"{where}: not an RSA (2048+ bits), P-256 or Ed25519 public key")
    assert isinstance(key, VerificationKey)
    return Candidate(key, algorithm)


def load_pem_keys(paths: Sequence[Path]) -> dict[str, Candidate]:
    """``kid`` (file name without extension) → key; ValueError names a file that is unusable."""
    keys: dict[str, Candidate] = {}
    for path in paths:
        try:
            key = load_pem_public_key(path.read_bytes())
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not a PEM public key ({error})") from None
        keys[path.stem] = _candidate(key, str(path))
    return keys


def load_jwks(text: str, where: str) -> dict[str, Candidate]:
    try:
        jwk_set = jwt.PyJWKSet.from_json(text)
    except (jwt.PyJWTError, ValueError) as error:
        raise ValueError(f"{where}: not a usable JWKS ({error})") from None
    keys: dict[str, Candidate] = {}
    for jwk in jwk_set.keys:
        if jwk.key_id is None:
            raise ValueError(f"{where}: every key needs a kid")
        keys[jwk.key_id] = _candidate(jwk.key, f"{where}: kid {jwk.key_id}")
    return keys


class KeySource:
    """Finds the candidate keys for a token from its unverified header."""

    def __init__(
        self,
        static: dict[str, Candidate],
        jwks_url: str | None = None,
        refetch_cooldown_seconds: float = JWKS_REFETCH_COOLDOWN_SECONDS,
    ) -> None:
        self._static = static
        self._client = (
            jwt.PyJWKClient(
                jwks_url,
                cache_keys=False,
                lifespan=JWKS_LIFESPAN_SECONDS,
                timeout=JWKS_FETCH_TIMEOUT_SECONDS,
                cooldown_duration=refetch_cooldown_seconds,
            )
            if jwks_url
            else None
        )

    @property
    def fetches_over_network(self) -> bool:
        """True when ``candidates`` may block on HTTP (call it off the event loop)."""
        return self._client is not None

    def candidates(self, kid: str | None) -> list[Candidate]:
        if kid is None:
            return list(self._static.values())
        found = self._static.get(kid)
        if found is not None:
            return [found]
        if self._client is None:
            raise AuthenticationError(f"unknown kid {kid[:64]!r}")
        try:
            jwk = self._client.get_signing_key(kid)
        except jwt.PyJWKClientError as error:
            raise AuthenticationError(f"kid {kid[:64]!r} not in the JWKS ({error})") from None
        try:
            return [_candidate(jwk.key, f"JWKS kid {kid[:64]!r}")]
        except ValueError as error:
            raise AuthenticationError(str(error)) from None
