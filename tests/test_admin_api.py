"""The admin API over real HTTP (aiohttp on loopback) on a deployment made by ``init``: the
role matrix against every endpoint, the attack tokens of test_admin_auth against it, the key
lifecycle seen by the XKS API of a proxy on the same store, credentials, errors as JSON, and
the audit lines naming the token's ``sub``."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp.test_utils import TestClient

from tests.admin_tokens import ISSUER, mint, public_pem
from tests.conftest import KEY_BOTH, Deployment, make_deployment
from tests.test_admin_auth import ATTACK_NAMES, RSA_KEY, attack
from tests.xks_client import XksClient, encrypt_body
from xks_proxy.admin.api import create_admin_app
from xks_proxy.admin.roles import OPERATIONS, PERMISSIONS, Role
from xks_proxy.admin.settings import build_guard
from xks_proxy.config import load_config
from xks_proxy.errors import ConfigError
from xks_proxy.runtime import ProxyRuntime
from xks_proxy.web.admin_listener import start_admin_listener
from xks_proxy.web.app import create_app

AiohttpClient = Callable[..., Awaitable[TestClient[Any, Any]]]
SUBJECT = "alice@example.com"


def admin_deployment(directory: Path, database_url: str | None = None) -> Deployment:
    """An ``init`` deployment whose [admin.auth] also trusts the test issuer's RSA key."""
    return trust_test_issuer(make_deployment(directory, database_url=database_url))


def trust_test_issuer(deployment: Deployment) -> Deployment:
    """``deployment`` with [admin.auth] also trusting the test issuer's RSA key."""
    directory = deployment.directory
    (directory / "rsa-1.pem").write_bytes(public_pem(RSA_KEY))
    path = deployment.config_path
    text = path.read_text()
    text = text.replace('issuers = ["xks-proxy-dev"]', f'issuers = ["xks-proxy-dev", "{ISSUER}"]')
    text = text.replace(
        'public_keys = ["admin/dev-signing.pem"]',
        'public_keys = ["admin/dev-signing.pem", "rsa-1.pem"]',
    )
    path.write_text(text)
    return Deployment(directory, load_config(path))


def token(*roles: str, sub: str = SUBJECT) -> str:
    return mint(RSA_KEY, "RS256", "rsa-1", roles=list(roles), sub=sub)


@pytest.fixture
def admin_dep(tmp_path: Path) -> Deployment:
    return admin_deployment(tmp_path)


@pytest.fixture
async def admin(admin_dep: Deployment, aiohttp_client: AiohttpClient) -> TestClient[Any, Any]:
    config = admin_dep.config
    assert config.admin.enabled and config.admin.auth is not None
    return await aiohttp_client(create_admin_app(config, build_guard(config.admin.auth)))


async def call(
    client: TestClient[Any, Any],
    method: str,
    path: str,
    bearer: str | None,
    body: Any = None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer is not None else {}
    response = await client.request(
        method, "/admin/v1" + path, headers=headers, json=body if body is not None else None
    )
    assert response.content_type == "application/json", await response.text()
    return response.status, json.loads(await response.read())


STORE = "/key-stores/dev"
# (operation, method, path, body): every endpoint, each with the operation that guards it.
ENDPOINTS: list[tuple[str, str, str, Any]] = [
    ("health", "GET", "/health", None),
    ("key-stores.list", "GET", "/key-stores", None),
    ("key-stores.describe", "GET", STORE, None),
    ("keys.list", "GET", STORE + "/keys", None),
    ("keys.describe", "GET", f"{STORE}/keys/{KEY_BOTH}", None),
    ("keys.create", "POST", STORE + "/keys", {"keyId": "key-new"}),
    ("keys.disable", "POST", f"{STORE}/keys/{KEY_BOTH}/disable", None),
    ("keys.enable", "POST", f"{STORE}/keys/{KEY_BOTH}/enable", None),
    ("keys.rotate", "POST", f"{STORE}/keys/{KEY_BOTH}/rotate", None),
    ("keys.schedule-deletion", "POST", f"{STORE}/keys/key-new/schedule-deletion", {}),
    ("keys.cancel-deletion", "POST", f"{STORE}/keys/key-new/cancel-deletion", None),
    ("keys.create", "POST", STORE + "/keys", {"keyId": "key-ext", "origin": "external"}),
    (
        "keys.import-parameters",
        "POST",
        f"{STORE}/keys/key-ext/import-parameters",
        {"wrappingAlgorithm": "RSAES_OAEP_SHA_256"},
    ),
    ("credentials.list", "GET", STORE + "/credentials", None),
    ("credentials.create", "POST", STORE + "/credentials", None),
    (
        "credentials.add",
        "PUT",
        STORE + "/credentials/ADDEDKEYIDAAAAAAAAAB",
        {"secretAccessKey": "s" * 43},
    ),
    ("credentials.revoke", "DELETE", STORE + "/credentials/ADDEDKEYIDAAAAAAAAAB", None),
    ("policies.get", "GET", STORE + "/policy", None),
    ("policies.validate", "POST", STORE + "/policy/validate", {"policies": ""}),
]
POLICY = """@id("allow-the-rest")
permit (principal, action, resource);

@id("no-decrypt")
forbid (principal, action in Xks::Action::"Decrypt", resource);
"""


def test_every_endpoint_is_in_the_matrix() -> None:
    guarded = {operation for operation, *_ in ENDPOINTS}
    # Elsewhere: import-material and delete-material (test_admin_byok, which needs a wrapped
    # key), reload (tested on a process).
    assert guarded <= set(OPERATIONS)
    assert len({repr(endpoint) for endpoint in ENDPOINTS}) == len(ENDPOINTS)


@pytest.mark.parametrize("role", list(Role))
async def test_the_role_matrix_over_every_endpoint(admin: TestClient[Any, Any], role: Role) -> None:
    for operation, method, path, body in ENDPOINTS:
        status, answer = await call(admin, method, path, token(role.value), body)
        if OPERATIONS[operation] in PERMISSIONS[role]:
            assert status < 300, (role, operation, answer)
        else:
            assert status == 403, (role, operation, answer)
            assert answer["error"] == "insufficient_scope"


@pytest.mark.parametrize("name", ATTACK_NAMES)
async def test_each_attack_token_is_401_on_the_api(admin: TestClient[Any, Any], name: str) -> None:
    bearer, headers = attack(name)
    response = await admin.post(
        "/admin/v1" + STORE + "/keys",
        json={"keyId": "key-attacker"},
        headers=headers if bearer is None else {"Authorization": f"Bearer {bearer}"},
    )
    assert response.status == 401, name
    assert (await response.json())["error"] == "invalid_token"
    _, keys = await call(admin, "GET", STORE + "/keys", token("viewer"))
    assert "key-attacker" not in [k["keyId"] for k in keys["keys"]]


async def encrypt_status(xks: XksClient, key_id: str, until: int) -> int:
    """Encrypt until the answer's status is ``until`` or 5 s have passed; the last status."""
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        response = await xks.post("encrypt", key_id, encrypt_body(b"through the admin API"))
        await response.read()
        if response.status == until or asyncio.get_running_loop().time() > deadline:
            return response.status
        await asyncio.sleep(0.1)


async def test_a_key_made_through_the_api_serves_encrypt(
    admin: TestClient[Any, Any], admin_dep: Deployment, aiohttp_client: AiohttpClient
) -> None:
    runtime = ProxyRuntime(admin_dep.config)
    store = runtime.config.key_stores[0]
    xks = XksClient(
        await aiohttp_client(create_app(runtime)), store.uri_path, store.region,
        store.credentials[0],
    )  # fmt: skip
    custodian = token("key-admin")
    status, made = await call(admin, "POST", STORE + "/keys", custodian, {"keyId": "key-api"})
    assert (status, made["keyStatus"], made["keyUsage"]) == (201, "ENABLED", ["DECRYPT", "ENCRYPT"])
    # The proxy follows its key store (a poll once a second): the new key serves within 5 s.
    assert await encrypt_status(xks, "key-api", until=200) == 200
    status, rotated = await call(admin, "POST", STORE + "/keys/key-api/rotate", custodian)
    assert (status, rotated["versions"]) == (200, 2)
    status, disabled = await call(admin, "POST", STORE + "/keys/key-api/disable", token("operator"))
    assert (status, disabled["keyStatus"]) == (200, "DISABLED")
    assert await encrypt_status(xks, "key-api", until=400) == 400
    status, pending = await call(
        admin, "POST", STORE + "/keys/key-api/schedule-deletion", custodian,
        {"pendingWindowInDays": 7},
    )  # fmt: skip
    assert (status, pending["keyStatus"]) == (200, "PENDING_DELETION")
    status, conflict = await call(admin, "POST", STORE + "/keys/key-api/enable", token("operator"))
    assert status == 409 and "pending deletion" in conflict["message"].lower()
    status, _ = await call(admin, "POST", STORE + "/keys/key-api/cancel-deletion", custodian)
    assert status == 200
    status, enabled = await call(admin, "POST", STORE + "/keys/key-api/enable", token("operator"))
    assert (status, enabled["keyStatus"]) == (200, "ENABLED")
    assert await encrypt_status(xks, "key-api", until=200) == 200
    await runtime.close()
    audit = [
        json.loads(line) for line in (admin_dep.directory / "audit.log").read_text().splitlines()
    ]
    lifecycle = [a for a in audit if a.get("event") == "keyLifecycle" and a["keyId"] == "key-api"]
    assert [a["action"] for a in lifecycle] == [
        "create", "rotate", "disable", "schedule-deletion", "enable", "cancel-deletion", "enable"
    ]  # fmt: skip
    assert all(a["actor"] == f"{SUBJECT} ({ISSUER})" for a in lifecycle)
    requests = [a for a in audit if a.get("event") == "adminRequest"]
    assert {"action": "keys.enable", "outcome": "refused (409)"}.items() <= next(
        a for a in requests if a["outcome"] != "success"
    ).items()


async def test_credentials_through_the_api(
    admin: TestClient[Any, Any], admin_dep: Deployment
) -> None:
    security = token("security-admin")
    status, made = await call(admin, "POST", STORE + "/credentials", security)
    assert status == 201 and len(made["RawSecretAccessKey"]) >= 43
    new_id = made["AccessKeyId"]
    status, listed = await call(admin, "GET", STORE + "/credentials", token("viewer"))
    assert status == 200 and new_id in [c["accessKeyId"] for c in listed["credentials"]]
    assert made["RawSecretAccessKey"] not in json.dumps(listed)
    added_id, secret = "FLEETKEYIDAAAAAAAAAC", "f" * 43
    path = f"{STORE}/credentials/{added_id}"
    assert (await call(admin, "PUT", path, security, {"secretAccessKey": secret}))[0] == 201
    # Idempotent for the same secret; another secret under the same id is a conflict.
    assert (await call(admin, "PUT", path, security, {"secretAccessKey": secret}))[1][
        "added"
    ] is False
    status, conflict = await call(admin, "PUT", path, security, {"secretAccessKey": "g" * 43})
    assert (
        status == 409 and secret not in conflict["message"] and "g" * 43 not in conflict["message"]
    )
    reloaded = load_config(admin_dep.config_path)
    assert added_id in [c.access_key_id for c in reloaded.key_stores[0].credentials]
    assert (await call(admin, "DELETE", path, security))[0] == 200
    status, gone = await call(admin, "DELETE", path, security)
    assert status == 409 and "no credential" in gone["message"]
    for listed_id in [
        c.access_key_id for c in load_config(admin_dep.config_path).key_stores[0].credentials
    ]:
        if listed_id == new_id:
            continue
        assert (await call(admin, "DELETE", f"{STORE}/credentials/{listed_id}", security))[0] == 200
    # The last credential of a key store goes only with force=true.
    status, last = await call(admin, "DELETE", f"{STORE}/credentials/{new_id}", security)
    assert status == 409 and "last credential" in last["message"]
    audit = (admin_dep.directory / "audit.log").read_text()
    assert made["RawSecretAccessKey"] not in audit and secret not in audit


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/key-stores/nope", None, 404),
        ("GET", "/key-stores/nope/keys", None, 404),
        ("GET", STORE + "/keys/key-missing", None, 404),
        ("POST", STORE + "/keys/key-missing/rotate", None, 404),
        ("POST", STORE + "/keys", {"keyId": KEY_BOTH}, 409),
        ("POST", STORE + "/keys", {"keyId": "has space"}, 400),
        ("POST", STORE + "/keys", {"keyId": 7}, 400),
        ("POST", STORE + "/keys", {}, 400),
        ("POST", STORE + "/keys", ["not", "an", "object"], 400),
        ("POST", STORE + "/keys", {"keyId": "key-x", "keyUsage": ["SIGN"]}, 400),
        ("POST", f"{STORE}/keys/{KEY_BOTH}/schedule-deletion", {"pendingWindowInDays": 3}, 400),
        ("POST", f"{STORE}/keys/{KEY_BOTH}/schedule-deletion", {"pendingWindowInDays": "7"}, 400),
        ("GET", "/no-such-thing", None, 404),
        ("DELETE", "/health", None, 405),
    ],
)
async def test_bad_requests_are_json_errors_never_500(
    admin: TestClient[Any, Any], method: str, path: str, body: Any, status: int
) -> None:
    everything = token(*(role.value for role in Role))
    got, answer = await call(admin, method, path, everything, body)
    assert got == status, answer
    assert set(answer) == {"error", "message"} and answer["message"]


async def test_a_body_that_is_not_json_is_400(admin: TestClient[Any, Any]) -> None:
    response = await admin.post(
        "/admin/v1" + STORE + "/keys", data=b"{not json",
        headers={"Authorization": f"Bearer {token('key-admin')}"},
    )  # fmt: skip
    assert response.status == 400 and (await response.json())["error"] == "bad_request"


async def test_refusals_are_audited_with_who_and_why(
    admin: TestClient[Any, Any], admin_dep: Deployment
) -> None:
    assert (
        await call(
            admin, "POST", STORE + "/keys", token("viewer", sub="mallory"), {"keyId": "key-m"}
        )
    )[0] == 403
    assert (await call(admin, "GET", "/key-stores", None))[0] == 401
    lines = [json.loads(x) for x in (admin_dep.directory / "audit.log").read_text().splitlines()]
    denied = [a for a in lines if a.get("event") == "adminRequest"]
    assert denied[0]["outcome"] == "refused (403)" and "mallory" in denied[0]["detail"]
    assert denied[0]["action"] == "keys.create"
    assert denied[1]["outcome"] == "refused (401)" and denied[1]["actor"] == "unauthenticated"


async def test_policies_get_and_validate(
    admin: TestClient[Any, Any], admin_dep: Deployment
) -> None:
    viewer = token("viewer")
    status, none = await call(admin, "GET", STORE + "/policy", viewer)
    assert (status, none["text"]) == (200, None)
    status, good = await call(
        admin, "POST", STORE + "/policy/validate", viewer, {"policies": POLICY}
    )
    assert status == 200 and good["valid"] is True
    assert [p["id"] for p in good["policies"]] == ["allow-the-rest", "no-decrypt"]
    broken = POLICY.replace("forbid (", "forbid ((")
    status, bad = await call(
        admin, "POST", STORE + "/policy/validate", viewer, {"policies": broken}
    )
    assert status == 200 and bad["valid"] is False and "line 5" in bad["error"]
    (admin_dep.directory / "store.cedar").write_text(POLICY)
    text = admin_dep.config_path.read_text().replace(
        'keys = ["key-*"]', 'keys = ["key-*"]\nauthorization_policy = "store.cedar"'
    )
    admin_dep.config_path.write_text(text)
    status, got = await call(admin, "GET", STORE + "/policy", viewer)
    assert status == 200 and got["text"] == POLICY and got["policyFile"] == "store.cedar"
    status, _ = await call(admin, "POST", STORE + "/policy/validate", viewer, {"policies": 3})
    assert status == 400


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('host = "127.0.0.1"\nport = 0\n\n[admin.auth]',
         'host = "0.0.0.0"\nport = 0\n\n[admin.auth]', "[admin.tls] is required"),
        ("[admin.auth]", "[admin.unused]", "admin.unused: unknown key"),
        ('audience = "xks-proxy-admin"', "", "admin.auth.audience: is required"),
    ],
)  # fmt: skip
def test_admin_settings_mistakes_are_refused(
    admin_dep: Deployment, old: str, new: str, message: str
) -> None:
    text = admin_dep.config_path.read_text()
    assert old in text
    admin_dep.config_path.write_text(text.replace(old, new))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(admin_dep.config_path)


def test_an_enabled_admin_api_needs_its_auth_table(admin_dep: Deployment) -> None:
    text = admin_dep.config_path.read_text()
    auth = text[text.index("[admin.auth]") : text.index("[backends")]
    admin_dep.config_path.write_text(text.replace(auth, ""))
    with pytest.raises(ConfigError, match=r"admin\.auth: required"):
        load_config(admin_dep.config_path)


async def test_the_admin_listener_over_mutual_tls(admin_dep: Deployment, tmp_path: Path) -> None:
    """[admin.tls] with client_auth: the XKS port's TLS machinery, CN allow-list included."""
    ca = trustme.CA()
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "server.pem")
    )
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    text = admin_dep.config_path.read_text().replace(
        "[admin.auth]",
        f'[admin.tls]\ncertificate = "{tmp_path / "server.pem"}"\n'
        f'private_key = "{tmp_path / "server.pem"}"\n'
        f'[admin.tls.client_auth]\nca_bundle = "{tmp_path / "ca.pem"}"\n'
        'allowed_common_names = ["custodian"]\n\n[admin.auth]',
    )
    admin_dep.config_path.write_text(text)
    listener = await start_admin_listener(load_config(admin_dep.config_path))
    assert listener is not None
    url = f"https://localhost:{listener.site.port}/admin/v1/health"
    headers = {"Authorization": f"Bearer {token('viewer')}"}
    try:
        for name, expected in (("custodian", 200), ("intruder", None)):
            context = ssl.create_default_context()
            ca.configure_trust(context)
            ca.issue_cert(name, common_name=name).configure_cert(context)
            async with aiohttp.ClientSession() as session:
                try:
                    async with session.get(url, ssl=context, headers=headers) as response:
                        status: int | None = response.status
                except aiohttp.ClientError:
                    status = None  # the connection is closed before any HTTP byte
            assert status == expected, name
    finally:
        await listener.stop()
