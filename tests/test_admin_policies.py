"""Secondary-authorization policies through the admin API: put (validated first, written
atomically, hot-reloaded with the decision cache dropped, audited), validate and explain over
real HTTP; and the same against a running ``xks-proxy serve`` with ``policy put`` / ``policy
test`` / ``policy validate`` and ``--admin-url``."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.authz_policies import ALICE, ALICE_ENCRYPTS_ONLY, BASELINE, BOB, DENY_ALL, ONLY_EBS
from tests.conftest import KEY_BOTH, Deployment
from tests.proxy_process import ProxyProcess, close_all
from tests.test_admin_api import AiohttpClient, admin_deployment, call, token
from tests.test_admin_process import mint
from tests.test_authz_http import POLICY_FILE, deployment_with_policy
from tests.test_authz_process import Caller
from tests.test_cli import run
from tests.xks_client import decrypt_body, encrypt_body
from xks_proxy.admin.api import RELOAD, create_admin_app
from xks_proxy.admin.settings import build_guard
from xks_proxy.config import load_config

POLICY = "/key-stores/dev/policy"
BROKEN = ALICE_ENCRYPTS_ONLY.replace("action in", "action in in")


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    close_all()


def with_policy_file(deployment: Deployment, text: str) -> Deployment:
    (deployment.directory / POLICY_FILE).write_text(text)
    config = deployment.config_path.read_text().replace(
        'keys = ["key-*"]', f'keys = ["key-*"]\nauthorization_policy = "{POLICY_FILE}"'
    )
    deployment.config_path.write_text(config)
    return Deployment(deployment.directory, load_config(deployment.config_path))


class Admin:
    """The admin app on a real loopback HTTP server, with its reloads counted."""

    def __init__(self, client: TestClient[Any, Any], reloads: list[int]) -> None:
        self.client, self.reloads = client, reloads

    async def __call__(
        self, method: str, path: str, role: str, body: Any = None
    ) -> tuple[int, Any]:
        return await call(self.client, method, path, token(role), body)


@pytest.fixture
async def admin(tmp_path: Path, aiohttp_client: AiohttpClient) -> Admin:
    deployment = with_policy_file(admin_deployment(tmp_path), ALICE_ENCRYPTS_ONLY)
    config = deployment.config
    assert config.admin.auth is not None
    app = create_admin_app(config, build_guard(config.admin.auth))
    reloads: list[int] = []
    app[RELOAD] = lambda: reloads.append(1)
    return Admin(await aiohttp_client(app), reloads)


def admin_audit(directory: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in (directory / "audit.log").read_text().splitlines()]
    return [line for line in lines if line.get("event") == "adminRequest"]


async def test_put_validates_writes_atomically_and_reloads(admin: Admin, tmp_path: Path) -> None:
    policy_file = tmp_path / POLICY_FILE
    policy_file.chmod(0o640)
    inode = policy_file.stat().st_ino

    status, refused = await admin("PUT", POLICY, "security-admin", {"policies": BROKEN})
    assert status == 400 and refused["error"] == "invalid_policy"
    assert "line 8, column 16" in refused["message"], refused
    assert policy_file.read_text() == ALICE_ENCRYPTS_ONLY and admin.reloads == []

    for role in ("viewer", "operator", "key-admin"):
        status, _ = await admin("PUT", POLICY, role, {"policies": DENY_ALL})
        assert status == 403, role
    assert policy_file.read_text() == ALICE_ENCRYPTS_ONLY and admin.reloads == []

    status, put = await admin("PUT", POLICY, "security-admin", {"policies": ONLY_EBS})
    assert status == 200, put
    assert [p["id"] for p in put["policies"]] == ["allow-the-rest", "key-both-only-through-ebs"]
    assert put["reload"] == "requested" and admin.reloads == [1]
    assert policy_file.read_text() == ONLY_EBS
    # Replaced by a rename (a reader never sees half a file), keeping the operator's mode.
    assert policy_file.stat().st_ino != inode
    assert stat.S_IMODE(policy_file.stat().st_mode) == 0o640
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{POLICY_FILE}.")]
    status, got = await admin("GET", POLICY, "viewer")
    assert status == 200 and got["text"] == ONLY_EBS

    for body in ({}, {"policies": 7}, {"policies": "x" * 61_000}):
        status, answer = await admin("PUT", POLICY, "security-admin", body)
        assert status == 400 and answer["error"] == "bad_request", body
    assert admin.reloads == [1]

    puts = [a for a in admin_audit(tmp_path) if a["action"] == "policies.put"]
    outcomes = [a["outcome"] for a in puts]
    assert (
        outcomes == ["refused (400)"] + ["refused (403)"] * 3 + ["success"] + ["refused (400)"] * 3
    )
    success = puts[4]
    assert success["actor"].startswith("alice@example.com")
    assert "key store dev" in success["detail"] and "key-both-only-through-ebs" in success["detail"]
    assert "context.kmsViaService" not in json.dumps(puts)


async def test_put_needs_a_policy_file_in_the_configuration(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    deployment = admin_deployment(tmp_path)
    assert deployment.config.admin.auth is not None
    app = create_admin_app(deployment.config, build_guard(deployment.config.admin.auth))
    app[RELOAD] = lambda: pytest.fail("no reload without a change")
    client = await aiohttp_client(app)
    status, answer = await call(
        client, "PUT", POLICY, token("security-admin"), {"policies": BASELINE}
    )
    assert status == 409 and "has no authorization_policy" in answer["message"]
    status, answer = await call(client, "PUT", "/key-stores/nope/policy", token("security-admin"),
                                {"policies": BASELINE})  # fmt: skip
    assert status == 404


async def test_explain_a_decision(admin: Admin) -> None:
    request: dict[str, Any] = {
        "xksOperation": "Decrypt",
        "keyId": KEY_BOTH,
        "requestMetadata": {"kmsOperation": "Decrypt", "awsPrincipalArn": ALICE},
    }
    status, denied = await admin("POST", POLICY + "/explain", "viewer", request)
    assert status == 200, denied
    assert denied["decision"] == "DENY" and denied["reason"] is None
    (deciding,) = denied["determiningPolicies"]
    assert (deciding["id"], deciding["line"]) == ("alice-may-not-decrypt", 5)
    assert "forbid" in deciding["text"]

    # An audit line as it is (flat fields) decides the same way.
    flat = {"xksOperation": "Decrypt", "keyId": KEY_BOTH, "kmsOperation": "Decrypt",
            "awsPrincipalArn": BOB, "keyStore": "ignored"}  # fmt: skip
    status, allowed = await admin("POST", POLICY + "/explain", "viewer", flat)
    assert (status, allowed["decision"]) == (200, "ALLOW")
    assert [p["id"] for p in allowed["determiningPolicies"]] == ["allow-the-rest"]

    # A candidate decides instead of the file in force; the file is untouched.
    status, candidate = await admin(
        "POST", POLICY + "/explain", "viewer", {**request, "candidatePolicies": BASELINE}
    )
    assert (status, candidate["decision"]) == (200, "ALLOW")
    status, health = await admin(
        "POST", POLICY + "/explain", "viewer", {"xksOperation": "GetHealthStatus"}
    )
    assert (status, health["decision"]) == (200, "ALLOW") and "never" in health["reason"]

    for bad, message in [
        ({"xksOperation": "Sign"}, "xksOperation must be one of"),
        ({"xksOperation": "Decrypt", "keyId": KEY_BOTH}, "kmsOperation and awsPrincipalArn"),
        ({**request, "candidatePolicies": BROKEN}, "line 8, column 16"),
        ({**request, "candidatePolicies": 3}, "candidatePolicies: must be a str"),
    ]:
        status, answer = await admin("POST", POLICY + "/explain", "viewer", bad)
        assert status == 400 and message in answer["message"], (bad, answer)
    assert admin.reloads == []


def test_policy_put_over_the_admin_url_is_in_force_at_once(tmp_path: Path) -> None:
    """A running proxy: decisions cached under the old policy give way to the new one."""
    deployment = deployment_with_policy(tmp_path, ALICE_ENCRYPTS_ONLY)
    config = deployment.config_path
    security = mint(config, "security-admin", tmp_path / "security.jwt")
    custodian = mint(config, "key-admin", tmp_path / "custodian.jwt")
    (tmp_path / "baseline.cedar").write_text(BASELINE)
    (tmp_path / "broken.cedar").write_text(BROKEN)
    request = tmp_path / "request.json"
    with ProxyProcess(config, ready="admin API on") as proxy:
        remote = ("--admin-url", proxy.admin_url, "--key-store", "dev", "--token-file")
        caller = Caller(proxy, deployment)
        status, encrypted = caller("encrypt", encrypt_body(b"data"))
        assert status == 200
        for _ in range(2):  # the second answer comes from the decision cache
            assert caller("decrypt", decrypt_body(encrypted))[0] == 403
        request.write_text(json.dumps(
            {"xksOperation": "Decrypt", "keyId": KEY_BOTH,
             "requestMetadata": {"kmsOperation": "Decrypt", "awsPrincipalArn": ALICE}}
        ))  # fmt: skip
        explained = run("policy", "test", *remote, str(security), "--request", str(request),
                        check=False)  # fmt: skip
        assert explained.returncode == 1 and "alice-may-not-decrypt (line 5):" in explained.stdout

        baseline, broken_file = str(tmp_path / "baseline.cedar"), str(tmp_path / "broken.cedar")
        refused = run("policy", "put", *remote, str(custodian), "--file", baseline, check=False)
        assert refused.returncode == 1 and "403" in refused.stderr
        broken = run("policy", "put", *remote, str(security), "--file", broken_file, check=False)
        assert broken.returncode == 1 and "line 8, column 16" in broken.stderr
        invalid = run("policy", "validate", "--file", broken_file, check=False)
        assert invalid.returncode == 1 and "line 8, column 16" in invalid.stdout
        assert caller("decrypt", decrypt_body(encrypted))[0] == 403

        put = run(
            "policy", "put", *remote, str(security), "--file", str(tmp_path / "baseline.cedar")
        )
        assert "allow-the-rest" in put.stdout and "reload requested" in put.stdout
        proxy.wait_for("configuration reloaded")
        assert caller("decrypt", decrypt_body(encrypted))[0] == 200
        allowed = run("policy", "test", *remote, str(security), "--request", str(request))
        assert "decision: ALLOW" in allowed.stdout
        assert proxy.stop() == 0
    assert (tmp_path / POLICY_FILE).read_text() == BASELINE
    assert os.stat(tmp_path / POLICY_FILE).st_size == len(BASELINE)
