"""Secondary authorization in the real ``xks-proxy`` process: a bad policy stops start-up and
check-config with its position, a reload re-reads the policy file (a bad one is rejected and
the running policy stays in force; a good one takes effect at once, cached decisions dropped),
and ``xks-proxy policy test`` prints the decision with exit 0 allow, 1 deny, 2 unusable input."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.authz_policies import ALICE, ALICE_ENCRYPTS_ONLY, BASELINE, BOB, DENY_ALL, EBS, ONLY_EBS
from tests.conftest import KEY_BOTH, Deployment
from tests.proxy_process import XKS_PROXY, ProxyProcess, close_all, connect, post
from tests.test_authz_http import POLICY_FILE, audit_lines, deployment_with_policy
from tests.xks_client import decrypt_body, encrypt_body

BAD_POLICY = BASELINE + "\nforbid (principal, action resource);\n"
BAD_POSITION = "line 4, column 27: unexpected token `resource`"
URI = "/keystores/dev/kms/xks/v1"


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    close_all()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [XKS_PROXY, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_bad_policy_stops_start_up_and_check_config(tmp_path: Path) -> None:
    deployment = deployment_with_policy(tmp_path, BAD_POLICY)
    config = str(deployment.config_path)
    for args in (
        ("serve", "--config", config, "--port", "0"),
        ("check-config", "--config", config),
    ):
        result = run(*args)
        assert result.returncode == 2, result.stderr
        assert "key_stores[0].authorization_policy" in result.stderr
        assert f"{POLICY_FILE}: {BAD_POSITION}" in result.stderr
        assert "Traceback" not in result.stderr
    # A policy that parses but names an attribute the model lacks: a warning, not a refusal.
    (tmp_path / POLICY_FILE).write_text(
        BASELINE + 'forbid (principal, action, resource) when { context.viaService == "" };\n'
    )
    warned = run("check-config", "--config", config)
    assert warned.returncode == 0, warned.stderr
    assert "key_stores[0].authorization_policy" in warned.stderr
    assert "policy policy1 (line 3)" in warned.stderr and "viaService" in warned.stderr
    (tmp_path / POLICY_FILE).unlink()
    missing = run("check-config", "--config", config)
    assert missing.returncode == 2 and "cannot read it" in missing.stderr


class Caller:
    """Signed requests to a running proxy with its deployment's credential."""

    def __init__(self, proxy: ProxyProcess, deployment: Deployment) -> None:
        self.proxy = proxy
        self.credential = deployment.config.key_stores[0].credentials[0]

    def __call__(self, operation: str, document: dict[str, Any]) -> tuple[int, Any]:
        path = f"{URI}/keys/{KEY_BOTH}/{operation}"
        return post(connect(self.proxy.port), path, document, self.credential)


def _reload(proxy: ProxyProcess, outcome: str, count: int) -> None:
    proxy.send_signal(signal.SIGHUP)
    proxy.wait_for(outcome, count=count)


def test_reload_rereads_the_policy_and_drops_cached_decisions(tmp_path: Path) -> None:
    deployment: Deployment = deployment_with_policy(tmp_path, ALICE_ENCRYPTS_ONLY)
    policy = tmp_path / POLICY_FILE
    with ProxyProcess(deployment.config_path) as proxy:
        call = Caller(proxy, deployment)
        status, encrypted = call("encrypt", encrypt_body(b"data"))
        assert status == 200
        decrypt = decrypt_body(encrypted)
        for _ in range(2):  # the second answer comes from the decision cache
            assert call("decrypt", decrypt)[0] == 403

        policy.write_text(BAD_POLICY)
        _reload(proxy, "reload rejected", count=1)
        assert BAD_POSITION in proxy.log
        assert call("decrypt", decrypt)[0] == 403
        assert call("encrypt", encrypt_body(b"data"))[0] == 200

        policy.write_text(BASELINE)
        _reload(proxy, "configuration reloaded", count=1)
        assert call("decrypt", decrypt)[0] == 200

        policy.write_text(DENY_ALL)
        _reload(proxy, "configuration reloaded", count=2)
        status, error = call("encrypt", encrypt_body(b"data"))
        assert (status, error["errorName"]) == (403, "AccessDeniedException")
    outcomes = [(line["status"], line["authzPolicies"]) for line in audit_lines(deployment)]
    assert outcomes == [
        (200, None),
        (403, ["alice-may-not-decrypt"]),
        (403, ["alice-may-not-decrypt"]),
        (403, ["alice-may-not-decrypt"]),
        (200, None),
        (200, None),
        (403, ["nothing"]),
    ]


def _policy_test(
    deployment: Deployment, request: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    path = deployment.directory / "request.json"
    path.write_text(json.dumps(request))
    config = str(deployment.config_path)
    return run("policy", "test", "--config", config, "--key-store", "dev", "--request", str(path))


def test_policy_test_prints_the_decision_and_the_policies(tmp_path: Path) -> None:
    deployment = deployment_with_policy(tmp_path, ONLY_EBS)
    metadata = {"kmsOperation": "Decrypt", "awsPrincipalArn": ALICE}
    request: dict[str, Any] = {
        "xksOperation": "Decrypt",
        "keyId": KEY_BOTH,
        "requestMetadata": metadata,
    }
    denied = _policy_test(deployment, request)
    assert denied.returncode == 1, denied.stderr
    assert "decision: DENY" in denied.stdout
    assert "key-both-only-through-ebs (line 5):" in denied.stdout
    assert 'unless { context.kmsViaService == "ebs" };' in denied.stdout

    metadata["kmsViaService"] = EBS
    allowed = _policy_test(deployment, request)
    assert allowed.returncode == 0, allowed.stderr
    assert "decision: ALLOW" in allowed.stdout
    assert "allow-the-rest (line 1):" in allowed.stdout

    health = _policy_test(deployment, {"xksOperation": "GetHealthStatus"})
    assert health.returncode == 0 and "never subject" in health.stdout

    for unusable in ({"xksOperation": "Sign"}, {"xksOperation": "Decrypt", "keyId": KEY_BOTH}):
        result = _policy_test(deployment, unusable)
        assert result.returncode == 2 and "--request" in result.stderr


def test_policy_test_replays_an_audit_line(tmp_path: Path) -> None:
    deployment = deployment_with_policy(tmp_path, ALICE_ENCRYPTS_ONLY)
    with ProxyProcess(deployment.config_path) as proxy:
        call = Caller(proxy, deployment)
        status, encrypted = call("encrypt", encrypt_body(b"data"))
        assert status == 200
        assert call("decrypt", decrypt_body(encrypted))[0] == 403
    denied_line = audit_lines(deployment)[-1]
    assert denied_line["authzPolicies"] == ["alice-may-not-decrypt"]
    replay = _policy_test(deployment, denied_line)
    assert replay.returncode == 1 and "alice-may-not-decrypt (line 5):" in replay.stdout
    # The fix, tried before it is deployed: Bob instead of Alice.
    (tmp_path / POLICY_FILE).write_text(ALICE_ENCRYPTS_ONLY.replace(ALICE, BOB))
    assert _policy_test(deployment, denied_line).returncode == 0


def test_policy_test_without_a_policy_allows(software_deployment: Deployment) -> None:
    request = {
        "xksOperation": "Encrypt",
        "keyId": KEY_BOTH,
        "kmsOperation": "BulkEncrypt",
        "awsPrincipalArn": ALICE,
    }
    result = _policy_test(software_deployment, request)
    assert result.returncode == 0 and "no authorization_policy" in result.stdout
