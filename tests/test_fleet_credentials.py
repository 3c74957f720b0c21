"""Credential rotation for a fleet, as the README tells operators to do it, across two real proxies.

KMS holds one credential per key store, so every proxy must accept the same one: it is made once
(``credentials create``) and installed on the other hosts (``credentials add``, secret from a
file or stdin). The last credential of a key store cannot be revoked by accident, and a reload
that would leave a key store with none is rejected.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proxy_process import (
    XKS_PROXY,
    ProxyProcess,
    close_all,
    connect,
    post,
)
from tests.softhsm import find_module
from xks_proxy import sigv4

HEALTH = {"requestMetadata": {"kmsRequestId": "fleet-1", "kmsOperation": "CreateCustomKeyStore"}}
URI = "/keystores/dev/kms/xks/v1"


def run(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [XKS_PROXY, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        input=stdin,
        env=env,
    )


def ok(*args: str, stdin: str | None = None) -> str:
    result = run(*args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    return result.stdout


def deployment(directory: Path) -> Path:
    ok(
        "init",
        str(directory),
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--admin-port",
        "0",
    )
    return directory / "xks-proxy.toml"


def access_key_ids(config: Path) -> list[str]:
    return [
        line.split()[1]
        for line in ok("credentials", "list", "--config", str(config)).split("\n")
        if line
    ]


def health_status(proxy: ProxyProcess, credential: sigv4.Credential) -> int:
    status, _ = post(connect(proxy.port), f"{URI}/health", HEALTH, credential)
    return status


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    yield deployment(tmp_path / "host-a"), deployment(tmp_path / "host-b")
    close_all()


def reload(proxy: ProxyProcess, count: int) -> None:
    proxy.send_signal(signal.SIGHUP)
    proxy.wait_for("configuration reloaded", count=count)


def test_fleet_rotation_end_to_end(two_hosts: tuple[Path, Path], tmp_path: Path) -> None:
    host_a, host_b = two_hosts
    # Day 0: host B takes host A's credential, so KMS's one credential works on both.
    original = json.loads(ok("kms-config", "--config", str(host_a)))
    first = sigv4.Credential(
        original["XksProxyAuthenticationCredential"]["AccessKeyId"],
        original["XksProxyAuthenticationCredential"]["RawSecretAccessKey"],
    )
    (own_b,) = access_key_ids(host_b)
    ok(
        "credentials", "add", "--config", str(host_b),
        "--access-key-id", first.access_key_id, "--secret-stdin",
        stdin=first.secret_access_key + "\n",
    )  # fmt: skip
    ok("credentials", "revoke", "--config", str(host_b), "--access-key-id", own_b)
    with ProxyProcess(host_a) as proxy_a, ProxyProcess(host_b) as proxy_b:
        assert health_status(proxy_a, first) == 200
        assert health_status(proxy_b, first) == 200

        # Rotation: one new credential, made once, installed everywhere, then the old one goes.
        secret_file = tmp_path / "new.secret"
        created = json.loads(
            ok("credentials", "create", "--config", str(host_a), "--secret-out", str(secret_file))
        )
        assert secret_file.stat().st_mode & 0o777 == 0o600
        second = sigv4.Credential(created["AccessKeyId"], created["RawSecretAccessKey"])
        assert secret_file.read_text().strip() == second.secret_access_key
        ok(
            "credentials", "add", "--config", str(host_b),
            "--access-key-id", second.access_key_id, "--secret-file", str(secret_file),
        )  # fmt: skip
        for proxy in (proxy_a, proxy_b):
            reload(proxy, count=1)
            assert health_status(proxy, first) == 200
            assert health_status(proxy, second) == 200

        for host in (host_a, host_b):
            ok(
                "credentials",
                "revoke",
                "--config",
                str(host),
                "--access-key-id",
                first.access_key_id,
            )
        for proxy in (proxy_a, proxy_b):
            reload(proxy, count=2)
            assert health_status(proxy, first) == 401
            assert health_status(proxy, second) == 200


def test_add_reads_the_secret_from_stdin_or_a_file_only(
    two_hosts: tuple[Path, Path], tmp_path: Path
) -> None:
    host_a, _ = two_hosts
    credential = sigv4.Credential("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "A" * 43 + "=")
    argv_secret = run(
        "credentials", "add", "--config", str(host_a),
        "--access-key-id", credential.access_key_id, "--secret", credential.secret_access_key,
    )  # fmt: skip
    assert argv_secret.returncode == 2, "a secret in argv must not be accepted"
    neither = run("credentials", "add", "--config", str(host_a), "--access-key-id", "X" * 26)
    assert neither.returncode == 2
    missing = run(
        "credentials", "add", "--config", str(host_a), "--access-key-id",
        credential.access_key_id, "--secret-file", str(tmp_path / "absent"),
    )  # fmt: skip
    assert missing.returncode == 1 and "absent" in missing.stderr
    assert "Traceback" not in missing.stderr

    args = ["credentials", "add", "--config", str(host_a), "--access-key-id"]
    ok(*args, credential.access_key_id, "--secret-stdin", stdin=credential.secret_access_key)
    assert credential.access_key_id in access_key_ids(host_a)
    # Idempotent for the same secret, so a deployment script may run it again.
    again = run(
        *args, credential.access_key_id, "--secret-stdin", stdin=credential.secret_access_key
    )
    assert again.returncode == 0 and "already" in again.stdout
    assert access_key_ids(host_a).count(credential.access_key_id) == 1
    other_secret = "B" * 43 + "="
    clash = run(*args, credential.access_key_id, "--secret-stdin", stdin=other_secret)
    assert clash.returncode == 1 and "another secret" in clash.stderr
    assert other_secret not in clash.stderr + clash.stdout
    bad = run(*args, credential.access_key_id.lower(), "--secret-stdin", stdin=other_secret)
    assert bad.returncode == 2 and "access_key_id" in bad.stderr
    short = run(*args, "Z" * 26, "--secret-stdin", stdin="too-short")
    assert short.returncode == 2 and "too-short" not in short.stderr


def test_last_credential_needs_force_and_a_reload_without_one_is_rejected(
    two_hosts: tuple[Path, Path],
) -> None:
    host_a, _ = two_hosts
    (only,) = access_key_ids(host_a)
    refused = run("credentials", "revoke", "--config", str(host_a), "--access-key-id", only)
    assert refused.returncode == 1 and "last credential" in refused.stderr
    assert access_key_ids(host_a) == [only]
    kms = json.loads(ok("kms-config", "--config", str(host_a)))["XksProxyAuthenticationCredential"]
    credential = sigv4.Credential(kms["AccessKeyId"], kms["RawSecretAccessKey"])
    with ProxyProcess(host_a) as proxy:
        ok("credentials", "revoke", "--config", str(host_a), "--access-key-id", only, "--force")
        proxy.send_signal(signal.SIGHUP)
        proxy.wait_for("reload rejected")
        assert "has no credential" in proxy.log
        # The configuration in force is untouched: KMS's credential still works.
        assert health_status(proxy, credential) == 200
    check = run("check-config", "--config", str(host_a))
    assert check.returncode == 2 and "no credential" in check.stderr


def test_commands_that_use_no_backend_need_none_of_its_secrets(tmp_path: Path) -> None:
    """An HSM PIN by reference (env:) is needed by the commands that log in, and only by them."""
    config = deployment(tmp_path / "hsm")
    text = config.read_text()
    text += (
        '\n[backends.hsm]\ntype = "pkcs11"\n'
        f'module = "{find_module()}"\nuser_pin = "env:XKS_TEST_HSM_PIN"\n'
        'tokens = [{label = "absent"}]\n'
    )
    config.write_text(text)
    environment = {k: v for k, v in os.environ.items() if k != "XKS_TEST_HSM_PIN"}
    for command in (
        ["kms-config", "--config", str(config)],
        ["credentials", "list", "--config", str(config)],
        ["credentials", "create", "--config", str(config)],
    ):
        result = run(*command, env=environment)
        assert result.returncode == 0, (command, result.stderr)
    # No proxy is running: reload fails on the pid file, not on the PIN.
    reload_result = run("reload", "--config", str(config), env=environment)
    assert reload_result.returncode == 1 and "pid" in reload_result.stderr
    needs_pin = run("check-config", "--config", str(config), env=environment)
    assert needs_pin.returncode == 2 and "XKS_TEST_HSM_PIN" in needs_pin.stderr
