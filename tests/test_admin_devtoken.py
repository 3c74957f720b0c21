"""Development signing key and tokens: what ``init`` and ``admin token`` will use."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from xks_proxy.admin.devtoken import make_signing_key, mint_token, parse_ttl
from xks_proxy.admin.errors import AuthenticationError, PermissionDeniedError
from xks_proxy.admin.keys import KeySource, load_pem_keys
from xks_proxy.admin.roles import Role, RoleMapper
from xks_proxy.admin.tokens import TokenPolicy, TokenVerifier

ISSUER, AUDIENCE = "xks-proxy-dev", "xks-proxy-admin"


def test_a_minted_token_verifies_with_the_public_half(tmp_path: Path) -> None:
    private, public = tmp_path / "admin-dev.key", tmp_path / "admin-dev.pem"
    make_signing_key(private, public)
    assert private.stat().st_mode & 0o777 == 0o600
    assert b"PRIVATE" not in public.read_bytes()
    verifier = TokenVerifier(TokenPolicy((ISSUER,), AUDIENCE), KeySource(load_pem_keys([public])))
    token = mint_token(
        private, kid="admin-dev", issuer=ISSUER, audience=AUDIENCE, role=Role.KEY_ADMIN,
        ttl_seconds=parse_ttl("15m"),
    )  # fmt: skip
    identity = verifier.verify(token)
    assert identity.issuer == ISSUER and identity.subject == "local-admin"
    assert identity.claims["exp"] - identity.claims["iat"] == 900
    mapper = RoleMapper()
    assert mapper.authorize(identity, "keys.create") == frozenset({Role.KEY_ADMIN})
    with pytest.raises(PermissionDeniedError):
        mapper.authorize(identity, "policies.put")
    expired = mint_token(
        private, kid="admin-dev", issuer=ISSUER, audience=AUDIENCE, role=Role.VIEWER,
        ttl_seconds=60, now=time.time() - 3600,
    )  # fmt: skip
    with pytest.raises(AuthenticationError, match="expired"):
        verifier.verify(expired)


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), ("24h", 86_400)])
def test_ttl(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "15", "0m", "-5m", "25h", "1d", "15 m"])
def test_bad_ttl(text: str) -> None:
    with pytest.raises(ValueError, match="--ttl"):
        parse_ttl(text)
