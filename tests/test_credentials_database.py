"""Credentials in the shared key store (``credentials_store = "database"``), across two real
proxies on one store (PostgreSQL, and an SQLite file two proxies share), over real HTTPS signed
by curl's own ``--aws-sigv4``: a credential made on one host is accepted by the other within a
second, a revoked one refused within a second, with no reload; secrets are sealed at rest and
never logged; with PostgreSQL gone the proxies go on verifying with what they have."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Deployment, lifecycle_audit_lines, make_deployment
from tests.postgres import PostgresServer
from tests.proxy_process import XKS_PROXY, ProxyProcess, add_tls, close_all
from tests.test_admin_api import AiohttpClient, admin_deployment, call, token
from tests.test_keystore_postgres import PROPAGATION_BOUND_SECONDS, wait_until
from tests.xks_client import HEALTH_BODY
from xks_proxy import sigv4
from xks_proxy.admin.api import create_admin_app
from xks_proxy.admin.settings import build_guard
from xks_proxy.config import load_config
from xks_proxy.credentials import FILE_VERSION
from xks_proxy.errors import ConfigError
from xks_proxy.runtime import ProxyRuntime

HEALTH_PATH = "/keystores/dev/kms/xks/v1/health"


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [XKS_PROXY, *args], capture_output=True, text=True, timeout=60, check=False, input=stdin
    )


def ok(*args: str, stdin: str | None = None) -> str:
    result = cli(*args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    return result.stdout


class Host:
    """One proxy host: its own directory (pid file, audit log, TLS files), the shared store."""

    def __init__(self, config: Path) -> None:
        self.config = config

    def credentials(self, action: str, *args: str, stdin: str | None = None) -> str:
        return ok("credentials", action, "--config", str(self.config), *args, stdin=stdin)

    def status(self, proxy: ProxyProcess, credential: sigv4.Credential) -> int:
        """The HTTP status of a GetHealthStatus signed by curl's own SigV4."""
        result = subprocess.run(
            ["curl", "-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}",
             "--cacert", str(self.config.parent / "ca.pem"),
             "--aws-sigv4", "aws:amz:us-east-1:kms-xks-proxy",
             "--user", f"{credential.access_key_id}:{credential.secret_access_key}",
             "-H", "Content-Type: application/json", "--data-binary", json.dumps(HEALTH_BODY),
             f"https://localhost:{proxy.port}{HEALTH_PATH}"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return int(result.stdout)


def database_credentials(deployment: Deployment) -> sigv4.Credential:
    """Move the deployment's credential from its file into the store; return it."""
    config = deployment.config_path
    (credential,) = deployment.config.key_stores[0].credentials
    text = config.read_text().replace(
        'keys = ["key-*"]', 'keys = ["key-*"]\ncredentials_store = "database"'
    )
    config.write_text(text)
    empty = {"version": FILE_VERSION, "credentials": []}
    (config.parent / "credentials.json").write_text(json.dumps(empty))
    ok(
        "credentials", "add", "--config", str(config), "--access-key-id",
        credential.access_key_id, "--secret-stdin", stdin=credential.secret_access_key,
    )  # fmt: skip
    return credential


def two_hosts(tmp_path: Path, database_url: str | None) -> tuple[Host, Host, sigv4.Credential]:
    deployment = make_deployment(tmp_path / "host-a", database_url=database_url)
    add_tls(deployment.config_path)
    credential = database_credentials(deployment)
    other = Path(shutil.copytree(deployment.directory, tmp_path / "host-b"))
    config_b = other / deployment.config_path.name
    if database_url is None:
        # Both hosts on the one SQLite file (as on one machine, or a shared volume).
        shared = deployment.directory / "keys.db"
        config_b.write_text(config_b.read_text().replace('path = "keys.db"', f'path = "{shared}"'))
    return Host(deployment.config_path), Host(config_b), credential


@pytest.fixture(params=["postgresql", "sqlite"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


def within_a_second(check: Callable[[], bool]) -> None:
    wait_until(check, timeout=PROPAGATION_BOUND_SECONDS)


def test_a_credential_made_or_revoked_on_one_host_reaches_the_other_within_a_second(
    tmp_path: Path, store_url: str | None
) -> None:
    host_a, host_b, first = two_hosts(tmp_path, store_url)
    try:
        with ProxyProcess(host_a.config) as proxy_a, ProxyProcess(host_b.config) as proxy_b:
            assert host_a.status(proxy_a, first) == 200
            assert host_b.status(proxy_b, first) == 200

            created = json.loads(host_a.credentials("create"))
            second = sigv4.Credential(created["AccessKeyId"], created["RawSecretAccessKey"])
            within_a_second(
                lambda: (
                    host_b.status(proxy_b, second) == 200 and host_a.status(proxy_a, second) == 200
                )
            )
            listed_b = host_b.credentials("list")
            assert first.access_key_id in listed_b and second.access_key_id in listed_b
            assert second.secret_access_key not in listed_b

            host_a.credentials("revoke", "--access-key-id", first.access_key_id)
            within_a_second(
                lambda: (
                    host_b.status(proxy_b, first) == 401 and host_a.status(proxy_a, first) == 401
                )
            )
            assert host_b.status(proxy_b, second) == 200

            # The last credential goes only when forced, from either host.
            last = cli(
                "credentials", "revoke", "--config", str(host_b.config),
                "--access-key-id", second.access_key_id,
            )  # fmt: skip
            assert last.returncode == 1 and "last credential" in last.stderr
            assert host_a.status(proxy_a, second) == 200
            for proxy in (proxy_a, proxy_b):
                for secret in (first.secret_access_key, second.secret_access_key):
                    assert secret not in proxy.log
    finally:
        close_all()
    if store_url is None:
        # Sealed at rest: no secret in the file, in any form SQLite keeps it.
        raw = (host_a.config.parent / "keys.db").read_bytes()
        assert second.secret_access_key.encode() not in raw
        with sqlite3.connect(host_a.config.parent / "keys.db") as db:
            rows = db.execute(
                "SELECT access_key_id, sealed, revoked_at FROM credentials"
            ).fetchall()
        revoked = {row[0]: row for row in rows}[first.access_key_id]
        assert revoked[1] is None and revoked[2] is not None  # the secret is erased


def test_add_is_idempotent_and_an_id_names_one_secret(
    tmp_path: Path, store_url: str | None
) -> None:
    host_a, host_b, first = two_hosts(tmp_path, store_url)
    again = host_b.credentials(
        "add", "--access-key-id", first.access_key_id, "--secret-stdin",
        stdin=first.secret_access_key,
    )  # fmt: skip
    assert "already has" in again
    other = cli(
        "credentials", "add", "--config", str(host_b.config), "--access-key-id",
        first.access_key_id, "--secret-stdin", stdin="B" * 43 + "=",
    )  # fmt: skip
    assert other.returncode == 1 and "another secret" in other.stderr
    assert "B" * 43 not in other.stderr
    (line,) = [x for x in host_a.credentials("list").splitlines() if x]
    assert first.access_key_id in line and "in the key store of backend local" in line
    # Each local change is one audit line on the host that ran it; never a secret.
    lines = lifecycle_audit_lines(host_b.config.parent / "audit.log")
    outcomes = [(x["action"], x["outcome"]) for x in lines if x["action"].startswith("cred")]
    assert outcomes[-2:] == [("credentials-add", "success"), ("credentials-add", "refused")]
    assert first.access_key_id in lines[-1]["detail"] + lines[-2]["detail"]
    text = (host_b.config.parent / "audit.log").read_text()
    assert first.secret_access_key not in text and "B" * 43 not in text


def test_a_key_store_without_any_credential_is_refused_at_serve(
    tmp_path: Path, postgres_url: str
) -> None:
    host_a, _, first = two_hosts(tmp_path, postgres_url)
    checked = ok("check-config", "--config", str(host_a.config))
    assert "1 credential(s)" in checked
    host_a.credentials("revoke", "--access-key-id", first.access_key_id, "--force")
    check = cli("check-config", "--config", str(host_a.config))
    assert check.returncode == 2 and "key store dev has no credential" in check.stderr
    serve = cli("serve", "--config", str(host_a.config), "--port", "0")
    assert serve.returncode != 0
    assert "key store dev has no credential" in serve.stderr
    assert "Traceback" not in serve.stderr


def test_with_postgresql_gone_proxies_verify_with_the_credentials_they_have(
    tmp_path: Path, private_postgres: PostgresServer
) -> None:
    host_a, host_b, first = two_hosts(tmp_path, private_postgres.create_database("fleet"))
    try:
        with ProxyProcess(host_a.config) as proxy_a:
            created = json.loads(host_b.credentials("create"))
            second = sigv4.Credential(created["AccessKeyId"], created["RawSecretAccessKey"])
            within_a_second(lambda: host_a.status(proxy_a, second) == 200)
            private_postgres.stop()
            for credential in (first, second):
                assert host_a.status(proxy_a, credential) == 200
            refused = cli("credentials", "create", "--config", str(host_b.config))
            assert refused.returncode == 1 and "unreachable" in refused.stderr
            assert "Traceback" not in refused.stderr
            private_postgres.start()
            host_b.credentials("revoke", "--access-key-id", first.access_key_id)
            # The listener reconnects after the outage; the poll finds the change meanwhile.
            wait_until(lambda: host_a.status(proxy_a, first) == 401, timeout=5)
            assert host_a.status(proxy_a, second) == 200
    finally:
        close_all()


async def test_the_admin_api_manages_stored_credentials_through_the_same_service(
    tmp_path: Path, postgres_url: str, aiohttp_client: AiohttpClient
) -> None:
    deployment = admin_deployment(tmp_path)
    config_path = deployment.config_path
    config_path.write_text(
        config_path.read_text().replace('path = "keys.db"', f'database_url = "{postgres_url}"')
    )
    # The deployment's keys were made in keys.db; the store here is PostgreSQL's, so make the
    # credential the key store needs there.
    first = database_credentials(Deployment(tmp_path, load_config(config_path)))
    config = load_config(config_path)
    assert config.admin.auth is not None
    admin = await aiohttp_client(create_admin_app(config, build_guard(config.admin.auth)))
    security = token("security-admin")
    status, made = await call(admin, "POST", "/key-stores/dev/credentials", security)
    assert status == 201
    status, listed = await call(admin, "GET", "/key-stores/dev/credentials", token("viewer"))
    origins = {c["accessKeyId"]: c["origin"] for c in listed["credentials"]}
    assert set(origins) == {first.access_key_id, made["AccessKeyId"]}
    assert all("in the key store of backend local" in origin for origin in origins.values())
    assert made["RawSecretAccessKey"] not in json.dumps(listed)
    status, described = await call(admin, "GET", "/key-stores/dev", token("viewer"))
    assert status == 200
    assert (described["credentials"], described["credentialsStore"]) == (2, "database")
    path = f"/key-stores/dev/credentials/{first.access_key_id}"
    assert (await call(admin, "DELETE", path, security))[0] == 200
    status, last = await call(
        admin, "DELETE", f"/key-stores/dev/credentials/{made['AccessKeyId']}", security
    )
    assert status == 409 and "last credential" in last["message"]
    # What the API wrote is what a proxy on the store serves with.
    runtime = ProxyRuntime(config)
    await runtime.open()
    try:
        (store,) = runtime.key_stores.values()
        assert set(store.credentials) == {made["AccessKeyId"]}
        assert (
            store.credentials[made["AccessKeyId"]].secret_access_key == made["RawSecretAccessKey"]
        )
    finally:
        await runtime.close()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ('credentials_store = "shared"', "must be file or database"),
        ('credentials_backend = "local"', 'only with credentials_store = "database"'),
        ('credentials_store = "database"\ncredentials_backend = "nope"', "no backend named"),
    ],
)
def test_credentials_store_mistakes_are_refused(tmp_path: Path, change: str, message: str) -> None:
    deployment = make_deployment(tmp_path)
    path = deployment.config_path
    path.write_text(path.read_text().replace('keys = ["key-*"]', f'keys = ["key-*"]\n{change}'))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)


def test_a_credentials_file_entry_for_a_database_key_store_is_refused(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path)
    path = deployment.config_path
    path.write_text(
        path.read_text().replace(
            'keys = ["key-*"]', 'keys = ["key-*"]\ncredentials_store = "database"'
        )
    )
    with pytest.raises(ConfigError, match="credentials_store is database"):
        load_config(path)


def test_keys_migrate_moves_stored_credentials_with_the_keys(
    tmp_path: Path, postgres_url: str
) -> None:
    deployment = make_deployment(tmp_path)
    first = database_credentials(deployment)
    config = str(deployment.config_path)
    moved = cli(
        "keys", "migrate", "--from", f"sqlite:{tmp_path / 'keys.db'}", "--to", postgres_url,
        "--config", config,
    )  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    assert "and 1 credentials" in moved.stdout
    (line,) = [
        line
        for line in (tmp_path / "audit.log").read_text().splitlines()
        if '"action":"migrate"' in line
    ]
    assert json.loads(line)["outcome"] == "success"
    text = deployment.config_path.read_text().replace(
        'path = "keys.db"', f'database_url = "{postgres_url}"'
    )
    deployment.config_path.write_text(text)
    listed = ok("credentials", "list", "--config", config)
    assert first.access_key_id in listed and "in the key store" in listed
    again = cli("keys", "migrate", "--from", f"sqlite:{tmp_path / 'keys.db'}", "--to", postgres_url)
    assert again.returncode == 1 and "already has key" in again.stderr
