"""Policies kept in the shared key store (``authorization_policy = "database"``): a put through
the admin API reaches every proxy following the store, with no reload and their decision caches
dropped; two proxies over one store, and a running ``xks-proxy serve`` with the CLI."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.authz_policies import ALICE, ALICE_ENCRYPTS_ONLY, BASELINE, DENY_ALL
from tests.conftest import KEY_BOTH, Deployment, make_pkcs11_deployment, software_database
from tests.proxy_process import ProxyProcess, close_all
from tests.softhsm import SoftHsm
from tests.test_admin_api import AiohttpClient, admin_deployment, call, token
from tests.test_admin_policies import BROKEN, admin_audit
from tests.test_admin_process import mint
from tests.test_authz_process import Caller
from tests.test_cli import run
from tests.xks_client import XksClient, decrypt_body, encrypt_body
from xks_proxy.admin.api import RELOAD, create_admin_app
from xks_proxy.admin.settings import build_guard
from xks_proxy.authz.policy import parse_policies
from xks_proxy.config import load_config
from xks_proxy.errors import ConfigError
from xks_proxy.keystore.policies import PolicyRows
from xks_proxy.runtime import ProxyRuntime
from xks_proxy.web.app import create_app

POLICY = "/key-stores/dev/policy"
IN_STORE = 'keys = ["key-*"]\nauthorization_policy = "database"'


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    close_all()


def in_store(deployment: Deployment) -> Deployment:
    text = deployment.config_path.read_text()
    deployment.config_path.write_text(text.replace('keys = ["key-*"]', IN_STORE, 1))
    return Deployment(deployment.directory, load_config(deployment.config_path))


async def decrypt_status(xks: XksClient, encrypted: dict[str, Any]) -> int:
    response = await xks.post("decrypt", KEY_BOTH, decrypt_body(encrypted))
    await response.read()
    return response.status


async def until(xks: XksClient, encrypted: dict[str, Any], status: int) -> None:
    """The followers poll once a second; a bound of 5 s only catches a hang."""
    for _ in range(100):
        if await decrypt_status(xks, encrypted) == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"decrypt never answered {status}")


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_a_put_reaches_every_proxy_of_the_store_without_a_reload(
    tmp_path: Path, aiohttp_client: AiohttpClient, request: pytest.FixtureRequest, database: str
) -> None:
    url = request.getfixturevalue("postgres_url") if database == "postgresql" else None
    deployment = in_store(admin_deployment(tmp_path, database_url=url))
    config = deployment.config
    store = config.key_stores[0]
    assert store.authorization_policy_in_store and store.authorization_policy is None
    proxies = []
    for _ in range(2):  # two proxies over one key store, as two hosts of a fleet
        client = await aiohttp_client(create_app(ProxyRuntime(load_config(config.path))))
        proxies.append(XksClient(client, store.uri_path, store.region, store.credentials[0]))
    assert config.admin.auth is not None
    app = create_admin_app(config, build_guard(config.admin.auth))
    app[RELOAD] = lambda: pytest.fail("a policy in the store needs no reload")
    admin = await aiohttp_client(app)

    encrypted = await proxies[0].call("encrypt", KEY_BOTH, encrypt_body(b"fleet"))
    for xks in proxies:  # no policy stored yet: allowed (and the allow is cached)
        assert await decrypt_status(xks, encrypted) == 200
    status, empty = await call(admin, "GET", POLICY, token("viewer"))
    assert (status, empty["policyStore"], empty["text"]) == (200, "database", None)

    status, refused = await call(admin, "PUT", POLICY, token("security-admin"),
                                 {"policies": BROKEN})  # fmt: skip
    assert status == 400 and "line 8, column 16" in refused["message"]
    status, put = await call(admin, "PUT", POLICY, token("security-admin"),
                             {"policies": ALICE_ENCRYPTS_ONLY})  # fmt: skip
    assert status == 200, put
    assert (put["policyStore"], put["reload"]) == ("database", "not needed")
    for xks in proxies:
        await until(xks, encrypted, 403)
    status, got = await call(admin, "GET", POLICY, token("viewer"))
    assert got["text"] == ALICE_ENCRYPTS_ONLY and got["revision"] == put["revision"]
    assert got["updatedBy"].startswith("alice@example.com")
    metadata = {"kmsOperation": "Decrypt", "awsPrincipalArn": ALICE}
    asked = {"xksOperation": "Decrypt", "keyId": KEY_BOTH, "requestMetadata": metadata}
    status, explained = await call(admin, "POST", POLICY + "/explain", token("viewer"), asked)
    assert explained["decision"] == "DENY"
    assert [p["id"] for p in explained["determiningPolicies"]] == ["alice-may-not-decrypt"]

    status, _ = await call(admin, "PUT", POLICY, token("security-admin"), {"policies": BASELINE})
    assert status == 200
    for xks in proxies:
        await until(xks, encrypted, 200)
    puts = [a for a in admin_audit(tmp_path) if a["action"] == "policies.put"]
    assert [a["outcome"] for a in puts] == ["refused (400)", "success", "success"]
    assert "key store dev, key store database" in puts[1]["detail"]


def test_a_running_proxy_follows_a_put_through_the_cli(tmp_path: Path) -> None:
    deployment = in_store(admin_deployment(tmp_path))
    config = deployment.config_path
    security = mint(config, "security-admin", tmp_path / "security.jwt")
    (tmp_path / "deny.cedar").write_text(DENY_ALL)
    with ProxyProcess(config, ready="admin API on") as proxy:
        remote = ("--admin-url", proxy.admin_url, "--token-file", str(security))
        assert "no policy in the key store database yet" in proxy.log
        caller = Caller(proxy, deployment)
        assert caller("encrypt", encrypt_body(b"data"))[0] == 200
        put = run("policy", "put", *remote, "--file", str(tmp_path / "deny.cedar"))
        assert "nothing" in put.stdout
        deadline = time.monotonic() + 5
        while caller("encrypt", encrypt_body(b"data"))[0] != 403:
            assert time.monotonic() < deadline, proxy.log
            time.sleep(0.05)
        assert "configuration reloaded" not in proxy.log
        assert "policy from the key store database in force" in proxy.log
        assert proxy.stop() == 0
    request = tmp_path / "request.json"
    flat = {"kmsOperation": "Encrypt", "awsPrincipalArn": ALICE}
    request.write_text(json.dumps({"xksOperation": "Encrypt", "keyId": KEY_BOTH, **flat}))
    local = run("policy", "test", "--config", str(config), "--request", str(request), check=False)
    assert local.returncode == 1 and "key store database" in local.stdout
    assert "nothing (line 1):" in local.stdout


def test_a_key_store_on_an_hsm_cannot_keep_its_policy_in_a_database(
    tmp_path: Path, softhsm: SoftHsm
) -> None:
    deployment = make_pkcs11_deployment(tmp_path, softhsm)
    text = deployment.config_path.read_text()
    deployment.config_path.write_text(text.replace('keys = ["key-*"]', IN_STORE, 1))
    config = load_config(deployment.config_path)
    assert config.key_stores[0].authorization_policy_in_store
    with pytest.raises(ConfigError, match="backend hsm is not one"):
        ProxyRuntime(config)
    refused = run("serve", "--config", str(deployment.config_path), "--port", "0", check=False)
    assert refused.returncode == 2 and "software backend" in refused.stderr


def test_check_config_parses_the_stored_policy_as_start_up_does(tmp_path: Path) -> None:
    deployment = in_store(admin_deployment(tmp_path))
    config = str(deployment.config_path)
    checked = run("check-config", "--config", config)
    assert "key store dev: no policy in the key store database yet" in checked.stdout

    database = software_database(deployment.config)
    try:  # as another xks-proxy version might have written it: stored unvalidated
        PolicyRows(database).put("dev", BROKEN, "tester@host")
    finally:
        database.close()
    refused = run("check-config", "--config", config, check=False)
    assert refused.returncode == 2, refused.stdout
    serve = run("serve", "--config", config, "--port", "0", check=False)
    assert serve.returncode == 2
    (message,) = [line for line in refused.stderr.splitlines() if "line 8, column 16" in line]
    assert "key store dev: database policy of dev" in message
    assert message in serve.stderr.splitlines()  # the very line start-up gives
    assert "Traceback" not in refused.stderr

    database = software_database(deployment.config)
    try:
        revision = PolicyRows(database).put("dev", ALICE_ENCRYPTS_ONLY, "tester@host")
    finally:
        database.close()
    checked = run("check-config", "--config", config)
    count = len(parse_policies(ALICE_ENCRYPTS_ONLY, Path("-")).policies)
    expected = (
        rf"key store dev: policy from the key store database ok \({count} policies, put by "
        rf"tester@host at \S+, revision {revision}\)"
    )
    assert re.search(expected, checked.stdout), checked.stdout
