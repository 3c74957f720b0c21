"""The admin API's authentication and authorization core over real HTTP (aiohttp on loopback):
tokens from PEM files, a JWKS file and a JWKS URL; the classic attacks, each 401 and never a
500; the role matrix, 403 with who, what and why in the log."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.admin_tokens import (
    AUDIENCE,
    ISSUER,
    claims,
    hs256_with,
    jwks,
    mint,
    public_pem,
    rsa_key,
    unsigned,
    with_payload,
)
from xks_proxy.admin.errors import AuthenticationError
from xks_proxy.admin.http import CALLER, GUARD, AdminGuard, Caller, requires
from xks_proxy.admin.keys import KeySource, load_jwks, load_pem_keys
from xks_proxy.admin.roles import OPERATIONS, PERMISSIONS, Role, RoleMapper
from xks_proxy.admin.tokens import TokenPolicy, TokenVerifier

RSA_KEY = rsa_key()
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
ED_KEY_ROTATED = ed25519.Ed25519PrivateKey.generate()
ATTACKER_KEY = rsa_key()

AiohttpClient = Callable[..., Awaitable[TestClient[Any, Any]]]
AiohttpServer = Callable[..., Awaitable[TestServer]]


@dataclass
class Jwks:
    document: str
    fetches: int = 0


async def handler(request: web.Request) -> web.Response:
    caller: Caller = request[CALLER]
    roles = sorted(caller.roles)
    return web.json_response({"sub": caller.identity.subject, "roles": roles})


def admin_app(verifier: TokenVerifier, mapper: RoleMapper) -> web.Application:
    app = web.Application()
    app[GUARD] = AdminGuard(verifier, mapper)
    for operation in OPERATIONS:
        app.router.add_post(f"/admin/v1/ops/{operation}", requires(operation)(handler))
    return app


@pytest.fixture
async def jwks_url(aiohttp_server: AiohttpServer) -> tuple[str, Jwks]:
    served = Jwks(jwks(ed_1=ED_KEY))

    async def serve(request: web.Request) -> web.Response:
        served.fetches += 1
        return web.Response(text=served.document, content_type="application/json")

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", serve)
    server = await aiohttp_server(app)
    return str(server.make_url("/.well-known/jwks.json")), served


@pytest.fixture
def verifier(tmp_path: Path, jwks_url: tuple[str, Jwks]) -> TokenVerifier:
    (tmp_path / "rsa-1.pem").write_bytes(public_pem(RSA_KEY))
    (tmp_path / "jwks.json").write_text(jwks(ec_1=EC_KEY))
    static = load_pem_keys([tmp_path / "rsa-1.pem"])
    static.update(load_jwks((tmp_path / "jwks.json").read_text(), "jwks.json"))
    # No cooldown here, so that the refetch on an unknown kid shows at once (the cooldown has
    # its own test).
    keys = KeySource(static, jwks_url=jwks_url[0], refetch_cooldown_seconds=0)
    policy = TokenPolicy(issuers=("https://other.example/", ISSUER), audience=AUDIENCE)
    return TokenVerifier(policy, keys)


@pytest.fixture
async def client(verifier: TokenVerifier, aiohttp_client: AiohttpClient) -> TestClient[Any, Any]:
    return await aiohttp_client(admin_app(verifier, RoleMapper()))


async def call(
    client: TestClient[Any, Any], token: str | None, operation: str = "keys.list", **headers: str
) -> tuple[int, dict[str, Any], Any]:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    response = await client.post(f"/admin/v1/ops/{operation}", headers=headers)
    return response.status, json.loads(await response.read()), response.headers


@pytest.mark.parametrize(
    ("key", "algorithm", "kid"),
    [(RSA_KEY, "RS256", "rsa-1"), (EC_KEY, "ES256", "ec-1"), (ED_KEY, "EdDSA", "ed-1")],
)
async def test_valid_tokens_from_each_key_source(
    client: TestClient[Any, Any], key: Any, algorithm: str, kid: str
) -> None:
    status, body, _ = await call(client, mint(key, algorithm, kid))
    assert status == 200, body
    assert body == {"sub": "alice@example.com", "roles": ["viewer"]}


async def test_a_pem_key_without_kid_is_tried(client: TestClient[Any, Any]) -> None:
    status, _, _ = await call(client, mint(RSA_KEY, "RS256", None))
    assert status == 200


def _attacks() -> list[tuple[str, str | None, dict[str, str]]]:
    now = int(time.time())
    valid = mint(RSA_KEY, "RS256", "rsa-1")
    return [
        ("alg none", unsigned({"alg": "none", "typ": "JWT"}, claims(roles=["key-admin"])), {}),
        ("alg none with a kid", unsigned({"alg": "none", "kid": "rsa-1"}, claims()), {}),
        ("HS256 keyed with the public key", hs256_with(public_pem(RSA_KEY), "rsa-1"), {}),
        ("expired", mint(RSA_KEY, "RS256", "rsa-1", iat=now - 900, exp=now - 120), {}),
        ("not yet valid (nbf)", mint(RSA_KEY, "RS256", "rsa-1", nbf=now + 120), {}),
        ("issued in the future", mint(RSA_KEY, "RS256", "rsa-1", iat=now + 120, exp=now + 600), {}),
        ("wrong audience", mint(RSA_KEY, "RS256", "rsa-1", aud="another-service"), {}),
        ("wrong issuer", mint(RSA_KEY, "RS256", "rsa-1", iss="https://evil.example/"), {}),
        ("unknown kid", mint(ATTACKER_KEY, "RS256", "rsa-9"), {}),
        ("right kid, other key", mint(ATTACKER_KEY, "RS256", "rsa-1"), {}),
        ("tampered payload", with_payload(valid, roles=["key-admin"]), {}),
        ("tampered subject", with_payload(valid, sub="root"), {}),
        ("ES256 header on an RSA kid", mint(EC_KEY, "ES256", "rsa-1"), {}),
        ("no exp", mint(RSA_KEY, "RS256", "rsa-1", exp=None), {}),
        ("no sub", mint(RSA_KEY, "RS256", "rsa-1", sub=None), {}),
        ("lifetime over a day", mint(RSA_KEY, "RS256", "rsa-1", exp=now + 90_000), {}),
        ("RS384 is not accepted", mint(RSA_KEY, "RS384", "rsa-1"), {}),
        ("garbage", "not.a.jwt", {}),
        ("two parts", "eyJhbGciOiJSUzI1NiJ9.e30", {}),
        ("one long part", "a" * 8100, {}),
        ("no Authorization", None, {}),
        ("Basic scheme", None, {"Authorization": "Basic YWxpY2U6c2VjcmV0"}),
        ("empty Bearer", None, {"Authorization": "Bearer "}),
    ]


ATTACK_NAMES = [name for name, *_ in _attacks()]


def attack(name: str) -> tuple[str | None, dict[str, str]]:
    """The attack's token and headers, made when the test runs: made at collection, the
    "issued in the future" token was in the past by the time a slow run reached it."""
    return next((token, headers) for each, token, headers in _attacks() if each == name)


@pytest.mark.parametrize("name", ATTACK_NAMES)
async def test_each_attack_is_401_and_never_500(client: TestClient[Any, Any], name: str) -> None:
    token, headers = attack(name)
    status, body, response_headers = await call(client, token, "keys.create", **headers)
    assert status == 401, (name, body)
    assert body == {"error": "invalid_token", "message": "A valid bearer token is required."}
    assert response_headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


async def test_an_unknown_kid_refetches_the_jwks(
    client: TestClient[Any, Any], jwks_url: tuple[str, Jwks]
) -> None:
    _, served = jwks_url
    assert (await call(client, mint(ED_KEY, "EdDSA", "ed-1")))[0] == 200
    rotated = mint(ED_KEY_ROTATED, "EdDSA", "ed-2")
    # The identity provider rotates its key: the new kid is fetched on first sight.
    served.document = jwks(ed_1=ED_KEY, ed_2=ED_KEY_ROTATED)
    assert (await call(client, rotated))[0] == 200
    assert served.fetches == 2
    # Cached since: known kids cost no fetch.
    assert (await call(client, mint(ED_KEY, "EdDSA", "ed-1")))[0] == 200
    assert served.fetches == 2


async def test_made_up_kids_cannot_make_the_proxy_hammer_the_jwks_url(
    jwks_url: tuple[str, Jwks], aiohttp_client: AiohttpClient
) -> None:
    url, served = jwks_url
    keys = KeySource({}, jwks_url=url)  # the default cooldown
    verifier = TokenVerifier(TokenPolicy(issuers=(ISSUER,), audience=AUDIENCE), keys)
    client = await aiohttp_client(admin_app(verifier, RoleMapper()))
    assert (await call(client, mint(ED_KEY, "EdDSA", "ed-1")))[0] == 200
    for n in range(5):
        assert (await call(client, mint(ATTACKER_KEY, "RS256", f"made-up-{n}")))[0] == 401
    assert served.fetches == 1


def _expected(role: Role, operation: str) -> int:
    return 200 if OPERATIONS[operation] in PERMISSIONS[role] else 403


async def test_the_role_matrix(client: TestClient[Any, Any], caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="xks_proxy.admin.http")
    for role in Role:
        token = mint(EC_KEY, "ES256", "ec-1", roles=[role.value], sub=f"{role.value}-user")
        for operation in OPERATIONS:
            status, body, _ = await call(client, token, operation)
            assert status == _expected(role, operation), (role, operation, body)
            if status == 403:
                assert body["error"] == "insufficient_scope"
    # Who, what and why, in the log; never in the answer.
    assert (
        f"admin keys.create denied (403): {ISSUER} viewer-user: keys.create needs manage-keys; "
        "roles held: viewer" in caplog.text
    )
    everyone_reads = {_expected(role, "keys.list") for role in Role}
    assert everyone_reads == {200}


async def test_no_role_and_unknown_roles_read_nothing(client: TestClient[Any, Any]) -> None:
    for roles in ([], ["root", "admin"], "superuser"):
        token = mint(RSA_KEY, "RS256", "rsa-1", roles=roles)
        assert (await call(client, token, "keys.list"))[0] == 403
    malformed = mint(RSA_KEY, "RS256", "rsa-1", roles={"key-admin": True})
    assert (await call(client, malformed, "keys.list"))[0] == 401


async def test_a_groups_claim_mapped_to_roles(
    verifier: TokenVerifier, aiohttp_client: AiohttpClient
) -> None:
    mapper = RoleMapper("groups", {"kms-custodians": "key-admin", "kms-ops": "operator"})
    client = await aiohttp_client(admin_app(verifier, mapper))
    token = mint(RSA_KEY, "RS256", "rsa-1", groups=["kms-custodians", "staff"], roles=None)
    assert (await call(client, token, "keys.create"))[0] == 200
    assert (await call(client, token, "keys.disable"))[0] == 403
    with pytest.raises(ValueError, match="unknown role"):
        RoleMapper("groups", {"x": "superuser"})


def test_key_files_that_cannot_be_used_are_refused(tmp_path: Path) -> None:
    weak = tmp_path / "weak.pem"
    from cryptography.hazmat.primitives.asymmetric import rsa

    weak.write_bytes(public_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    with pytest.raises(ValueError, match="2048"):
        load_pem_keys([weak])
    with pytest.raises(ValueError, match="not a PEM public key"):
        load_pem_keys([tmp_path / "missing.pem"])
    with pytest.raises(ValueError, match="not a usable JWKS"):
        load_jwks('{"keys": "x"}', "jwks.json")
    hs_jwks = json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]})
    with pytest.raises(ValueError, match="h"):
        load_jwks(hs_jwks, "jwks.json")


def test_an_oversized_token_is_refused_before_parsing() -> None:
    keys = KeySource(load_jwks(jwks(ec_1=EC_KEY), "jwks.json"))
    verifier = TokenVerifier(TokenPolicy(issuers=(ISSUER,), audience=AUDIENCE), keys)
    padded = mint(EC_KEY, "ES256", "ec-1", padding="x" * 9000)
    with pytest.raises(AuthenticationError, match="too long"):
        verifier.verify(padded)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.hex()))
def test_any_string_is_a_401_never_another_exception(token: str) -> None:
    keys = KeySource(load_jwks(jwks(ec_1=EC_KEY), "jwks.json"))
    verifier = TokenVerifier(TokenPolicy(issuers=(ISSUER,), audience=AUDIENCE), keys)
    with pytest.raises(AuthenticationError):
        verifier.verify(token)
