"""The command line as a user runs it: real subprocesses, a real server, signed requests."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.proxy_process import XKS_PROXY, ProxyProcess, connect, post
from xks_proxy import sigv4


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [XKS_PROXY, *args], capture_output=True, text=True, timeout=60, check=False
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    run(
        "init",
        str(tmp_path / "dep"),
        "--key-id",
        "cli-key",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--admin-port",
        "0",
    )
    return tmp_path / "dep" / "xks-proxy.toml"


def test_init_makes_a_private_deployment(tmp_path: Path) -> None:
    result = run("init", str(tmp_path / "d"))
    for name in ("xks-proxy.toml", "kek.key", "keys.db", "credentials.json"):
        assert (tmp_path / "d" / name).exists(), name
        assert name in result.stdout
    for private in ("kek.key", "keys.db", "credentials.json"):
        mode = stat.S_IMODE((tmp_path / "d" / private).stat().st_mode)
        assert mode == 0o600, private
    credentials = json.loads((tmp_path / "d" / "credentials.json").read_text())["credentials"]
    assert len(credentials) == 1
    access_key_id = credentials[0]["access_key_id"]
    assert access_key_id in result.stdout
    assert credentials[0]["secret_access_key"] not in result.stdout
    config = (tmp_path / "d" / "xks-proxy.toml").read_text()
    assert 'uri_path = "/keystores/dev/kms/xks/v1"' in config
    again = run("init", str(tmp_path / "d"), check=False)
    assert again.returncode == 1 and "--force" in again.stderr
    assert (tmp_path / "d" / "credentials.json").read_text().count(access_key_id) == 1
    forced = run("init", str(tmp_path / "d"), "--force")
    assert access_key_id not in forced.stdout


def test_generated_credentials_follow_the_spec(deployment: Path) -> None:
    run("credentials", "create", "--config", str(deployment))
    kms = json.loads(run("kms-config", "--config", str(deployment)).stdout)
    credential = kms["XksProxyAuthenticationCredential"]
    import re

    assert re.fullmatch(r"[A-Z2-7]{20,30}", credential["AccessKeyId"])
    assert re.fullmatch(r"[A-Za-z0-9/+=]{43,64}", credential["RawSecretAccessKey"])
    assert kms["XksProxyUriPath"] == "/keystores/dev/kms/xks/v1"


def test_init_serve_round_trip_and_metrics(deployment: Path) -> None:
    kms = json.loads(run("kms-config", "--config", str(deployment)).stdout)
    credential = sigv4.Credential(
        kms["XksProxyAuthenticationCredential"]["AccessKeyId"],
        kms["XksProxyAuthenticationCredential"]["RawSecretAccessKey"],
    )
    with ProxyProcess(deployment, ready="metrics on") as proxy:
        base, uri = f"http://127.0.0.1:{proxy.port}", kms["XksProxyUriPath"]
        connection = connect(proxy.port)
        metadata = {
            "awsPrincipalArn": "arn:aws:iam::1:user/u",
            "kmsKeyArn": "arn:k",
            "kmsOperation": "Encrypt",
            "kmsRequestId": "cli-1",
        }
        status, encrypted = post(
            connection,
            f"{uri}/keys/cli-key/encrypt",
            {
                "requestMetadata": metadata,
                "plaintext": "SGVsbG8gV29ybGQh",
                "encryptionAlgorithm": "AES_GCM",
            },
            credential,
        )
        assert status == 200, encrypted
        status, decrypted = post(
            connection,
            f"{uri}/keys/cli-key/decrypt",
            {
                "requestMetadata": {**metadata, "kmsOperation": "Decrypt"},
                "encryptionAlgorithm": "AES_GCM",
                **encrypted,
            },
            credential,
        )
        assert (status, decrypted) == (200, {"plaintext": "SGVsbG8gV29ybGQh"})
        status, health = post(
            connection,
            f"{uri}/health",
            {"requestMetadata": {"kmsRequestId": "h", "kmsOperation": "KmsHealthCheck"}},
            credential,
        )
        assert status == 200 and health["ekmFleetDetails"][0]["healthStatus"] == "ACTIVE"
        connection.close()
        with urllib.request.urlopen(proxy.metrics_url) as response:
            scraped = response.read().decode()
        assert 'xks_request_duration_seconds_count{key_store="dev",operation="Encrypt"' in scraped
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{base}/metrics")
        exit_code = proxy.stop()
    assert exit_code == 0
    audit = (deployment.parent / "audit.log").read_text()
    assert '"kmsRequestId":"cli-1"' in audit and "SGVsbG8gV29ybGQh" not in audit


def test_keys_commands(deployment: Path) -> None:
    config = ["--config", str(deployment)]
    run("keys", "create", *config, "--key-id", "enc-only", "--usage", "ENCRYPT")
    run("keys", "create", *config, "--key-id", "none", "--usage", "NONE")
    duplicate = run("keys", "create", *config, "--key-id", "none", check=False)
    assert duplicate.returncode == 1 and "exists" in duplicate.stderr
    bad = run("keys", "create", *config, "--key-id", "x", "--usage", "SIGN", check=False)
    assert bad.returncode == 2 and "--usage" in bad.stderr
    bad_id = run("keys", "create", *config, "--key-id", "bad/id", check=False)
    assert bad_id.returncode == 2
    run("keys", "disable", *config, "--key-id", "cli-key")
    run("keys", "rotate", *config, "--key-id", "enc-only")
    listed = {k["keyId"]: k for k in json.loads(run("keys", "list", *config, "--json").stdout)}
    assert set(listed) == {"cli-key", "enc-only", "none"}
    assert listed["cli-key"]["keyStatus"] == "DISABLED"
    assert listed["enc-only"]["keyUsage"] == ["ENCRYPT"] and listed["enc-only"]["versions"] == 2
    assert listed["none"]["keyUsage"] == []
    run("keys", "enable", *config, "--key-id", "cli-key")
    assert "cli-key  ENABLED" in run("keys", "list", *config).stdout
    missing = run("keys", "disable", *config, "--key-id", "nope", check=False)
    assert missing.returncode == 1


def test_credentials_rotation_commands(deployment: Path) -> None:
    config = ["--config", str(deployment)]
    first = run("credentials", "list", *config).stdout.split()[1]
    created = json.loads(run("credentials", "create", *config, "--key-store", "dev").stdout)
    listed = run("credentials", "list", *config).stdout
    assert first in listed and created["AccessKeyId"] in listed
    assert created["RawSecretAccessKey"] not in listed
    kms = json.loads(run("kms-config", *config).stdout)
    assert kms["XksProxyAuthenticationCredential"]["AccessKeyId"] == created["AccessKeyId"]
    run("credentials", "revoke", *config, "--access-key-id", first)
    listed = run("credentials", "list", *config).stdout
    assert first not in listed and created["AccessKeyId"] in listed
    again = run("credentials", "revoke", *config, "--access-key-id", first, check=False)
    assert again.returncode == 1
    unknown_store = run("credentials", "create", *config, "--key-store", "nope", check=False)
    assert unknown_store.returncode == 2 and "nope" in unknown_store.stderr


def test_check_config(deployment: Path) -> None:
    assert run("check-config", "--config", str(deployment)).stdout.strip().endswith(": ok")
    deployment.write_text(
        deployment.read_text().replace('region = "us-east-1"', 'region = "nowhere"')
    )
    result = run("check-config", "--config", str(deployment), check=False)
    assert result.returncode == 2 and "key_stores[0].region" in result.stderr


def test_wrong_kek_is_caught_before_serving(deployment: Path) -> None:
    (deployment.parent / "kek.key").write_text("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n")
    result = run("check-config", "--config", str(deployment), check=False)
    assert result.returncode == 2 and "key-encryption key" in result.stderr
    served = run("serve", "--config", str(deployment), "--port", "0", check=False)
    assert served.returncode == 2 and "key-encryption key" in served.stderr


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["init"],
        ["serve"],
        ["check-config"],
        ["keys"],
        ["keys", "create"],
        ["keys", "list"],
        ["keys", "enable"],
        ["keys", "disable"],
        ["keys", "rotate"],
        ["credentials"],
        ["credentials", "create"],
        ["credentials", "list"],
        ["credentials", "revoke"],
        ["kms-config"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.stdout.startswith("usage: xks-proxy")
    assert os.path.basename(XKS_PROXY) == "xks-proxy"
