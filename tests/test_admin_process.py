"""The admin API as a user meets it: ``init`` writes ``[admin]`` and a development key, ``admin
token`` mints a token, ``serve`` starts the admin listener on its own port, and the ``keys``
and ``credentials`` commands run over it with ``--admin-url``/``--token-file`` (real
subprocesses, real HTTP); a key made that way serves Encrypt on the XKS port."""

from __future__ import annotations

import json
import os
import stat
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.proxy_process import ProxyProcess, connect, post
from tests.test_cli import run
from tests.xks_client import encrypt_body
from xks_proxy import sigv4


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    run(
        "init", str(tmp_path / "dep"), "--key-id", "first-key", "--port", "0",
        "--metrics-port", "0", "--admin-port", "0",
    )  # fmt: skip
    return tmp_path / "dep" / "xks-proxy.toml"


def mint(config: Path, role: str, out: Path) -> Path:
    run("admin", "token", "--config", str(config), "--role", role, "--out", str(out))
    return out


def test_init_writes_an_enabled_loopback_admin_section(deployment: Path) -> None:
    admin = tomllib.loads(deployment.read_text())["admin"]
    assert admin["enabled"] is True and admin["host"] == "127.0.0.1"
    private = deployment.parent / "admin" / "dev-signing.key"
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    printed = run("admin", "token", "--config", str(deployment), "--role", "viewer").stdout
    assert printed.count(".") == 2
    refused = run("admin", "token", "--config", str(deployment), "--role", "root", check=False)
    assert refused.returncode == 2


def test_cli_over_the_admin_api_against_a_running_proxy(deployment: Path, tmp_path: Path) -> None:
    custodian = mint(deployment, "key-admin", tmp_path / "custodian.jwt")
    viewer = mint(deployment, "viewer", tmp_path / "viewer.jwt")
    security = mint(deployment, "security-admin", tmp_path / "security.jwt")
    kms = json.loads(run("kms-config", "--config", str(deployment)).stdout)
    credential = sigv4.Credential(
        kms["XksProxyAuthenticationCredential"]["AccessKeyId"],
        kms["XksProxyAuthenticationCredential"]["RawSecretAccessKey"],
    )
    with ProxyProcess(deployment, ready="admin API on") as proxy:
        url = proxy.admin_url
        remote = ("--admin-url", url, "--token-file")
        run("keys", "create", *remote, str(custodian), "--key-id", "key-over-api")
        listed = json.loads(run("keys", "list", *remote, str(viewer), "--json").stdout)
        assert "key-over-api" in [row["keyId"] for row in listed]
        connection = connect(proxy.port)
        status, encrypted = post(
            connection, f"{kms['XksProxyUriPath']}/keys/key-over-api/encrypt",
            encrypt_body(b"made over the admin API"), credential,
        )  # fmt: skip
        assert status == 200, encrypted
        denied = run(
            "keys", "disable", *remote, str(viewer), "--key-id", "key-over-api", check=False
        )
        assert denied.returncode == 1 and "403" in denied.stderr
        rotated = run("keys", "rotate", *remote, str(custodian), "--key-id", "key-over-api")
        assert "version 2" in rotated.stdout
        made = json.loads(run("credentials", "create", *remote, str(security)).stdout)
        rows = run("credentials", "list", *remote, str(viewer)).stdout
        assert made["AccessKeyId"] in rows and made["RawSecretAccessKey"] not in rows
        run("credentials", "revoke", *remote, str(security), "--access-key-id", made["AccessKeyId"])
        assert (
            made["AccessKeyId"]
            not in run("credentials", "list", "--config", str(deployment)).stdout
        )
        operator = mint(deployment, "operator", tmp_path / "operator.jwt").read_text().strip()
        request = urllib.request.Request(
            f"{url}/admin/v1/reload", method="POST",
            headers={"Authorization": f"Bearer {operator}"},
        )  # fmt: skip
        with urllib.request.urlopen(request) as answer:
            assert answer.status == 202
        proxy.wait_for("configuration reloaded")
        # The admin API is never on the XKS port.
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{proxy.port}/admin/v1/health")
        assert missing.value.code == 404
        missing.value.close()
        connection.close()
        assert proxy.stop() == 0
    audit = [
        json.loads(line) for line in (deployment.parent / "audit.log").read_text().splitlines()
    ]
    created = [a for a in audit if a.get("event") == "keyLifecycle" and a["action"] == "create"]
    assert created[-1]["keyId"] == "key-over-api" and created[-1]["actor"].startswith("local-admin")
    assert made["RawSecretAccessKey"] not in (deployment.parent / "audit.log").read_text()


def test_a_wrong_token_file_is_a_clear_error(deployment: Path, tmp_path: Path) -> None:
    missing = run(
        "keys", "list", "--admin-url", "http://127.0.0.1:1", "--token-file",
        str(tmp_path / "none"), check=False,
    )  # fmt: skip
    assert missing.returncode == 2 and "--token-file" in missing.stderr
    (tmp_path / "t").write_text("x.y.z")
    unreachable = run(
        "keys", "list", "--admin-url", "http://127.0.0.1:1", "--token-file", str(tmp_path / "t"),
        check=False,
    )  # fmt: skip
    assert unreachable.returncode == 1 and "unreachable" in unreachable.stderr
