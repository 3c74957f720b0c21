"""The ``[admin.auth]`` table: parsed from TOML, keys loaded, every mistake a ConfigError."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.admin_tokens import AUDIENCE, ISSUER, jwks, mint, public_pem, rsa_key
from xks_proxy.admin.errors import PermissionDeniedError
from xks_proxy.admin.settings import build_guard, parse_admin_auth
from xks_proxy.errors import ConfigError

RSA_KEY = rsa_key()
ED_KEY = ed25519.Ed25519PrivateKey.generate()

TABLE = f"""
[admin.auth]
issuers = ["{ISSUER}"]
audience = "{AUDIENCE}"
roles_claim = "groups"
public_keys = ["admin-dev.pem"]
jwks_file = "jwks.json"

[admin.auth.role_names]
"kms-custodians" = "key-admin"
"""


def test_a_configured_guard_verifies_and_authorizes(tmp_path: Path) -> None:
    (tmp_path / "admin-dev.pem").write_bytes(public_pem(RSA_KEY))
    (tmp_path / "jwks.json").write_text(jwks(ed_1=ED_KEY))
    config = parse_admin_auth(tomllib.loads(TABLE)["admin"]["auth"], "admin.auth", tmp_path)
    guard = build_guard(config)
    for token in (
        mint(RSA_KEY, "RS256", "admin-dev", groups=["kms-custodians"]),
        mint(ED_KEY, "EdDSA", "ed-1", groups="kms-custodians"),
    ):
        identity = guard.verifier.verify(token)
        assert guard.roles.authorize(identity, "keys.create")
        with pytest.raises(PermissionDeniedError):
            guard.roles.authorize(identity, "credentials.revoke")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('issuers = ["' + ISSUER + '"]', "issuers = []"), "admin.auth.issuers: at least one"),
        (('audience = "' + AUDIENCE + '"', ""), "admin.auth.audience: is required"),
        (('roles_claim = "groups"', "roles_claim = 3"), "admin.auth.roles_claim: must be a str"),
        (('"kms-custodians" = "key-admin"', '"x" = "root"'), "unknown role(s) root"),
        (('jwks_file = "jwks.json"', 'jwks_url = "http://idp.example.com/jwks"'), "https"),
        (('jwks_file = "jwks.json"', "leeway_seconds = 3600"), "leeway_seconds: must be between"),
        (('jwks_file = "jwks.json"', 'colour = "red"'), "admin.auth.colour: unknown key"),
        (('public_keys = ["admin-dev.pem"]', 'public_keys = ["missing.pem"]'), "missing.pem"),
    ],
)
def test_mistakes_are_config_errors(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    (tmp_path / "admin-dev.pem").write_bytes(public_pem(RSA_KEY))
    (tmp_path / "jwks.json").write_text(jwks(ed_1=ED_KEY))
    assert change[0] in TABLE
    with pytest.raises(ConfigError) as raised:
        build_guard(
            parse_admin_auth(
                tomllib.loads(TABLE.replace(*change))["admin"]["auth"], "admin.auth", tmp_path
            )
        )
    assert message in str(raised.value)


def test_a_key_source_is_required(tmp_path: Path) -> None:
    text = f'[admin.auth]\nissuers = ["{ISSUER}"]\naudience = "a"\n'
    with pytest.raises(ConfigError, match="public_keys, jwks_file or jwks_url"):
        parse_admin_auth(tomllib.loads(text)["admin"]["auth"], "admin.auth", tmp_path)
    loopback = text + 'jwks_url = "http://127.0.0.1:8443/jwks.json"\n'
    config = parse_admin_auth(tomllib.loads(loopback)["admin"]["auth"], "admin.auth", tmp_path)
    assert config.jwks_url == "http://127.0.0.1:8443/jwks.json"
