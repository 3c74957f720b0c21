"""``xks-proxy init``: a ready-to-run deployment in one folder.

It holds a configuration file and a credentials file (0600) with one fresh SigV4 credential for
one key store whose URI path has a non-empty prefix, ``/keystores/<name>/kms/xks/v1``, and a
backend with one ENCRYPT+DECRYPT key and the internal health-check key:

- the default, an embedded software key store (``keys.db``) under a key-encryption key in a
  0600 file (``kek.key``);
- with ``database_url``, the same software keys in a shared PostgreSQL store instead of
  ``keys.db``; the configuration names that URL exactly as given: pass ``env:NAME`` to keep a
  password out of the file (it is resolved now to create the keys, and by every proxy at start);
- ``--backend pkcs11`` (``Pkcs11Setup``): a PKCS#11 token named by module and token label,
  whose user PIN the proxy reads from an environment variable (``user_pin = "env:NAME"``, so
  the PIN is never written to disk by init). Init logs in with that PIN, so the deployment is
  proven to work: it makes the health key and the first key on the token when missing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from xks_proxy.backends.base import DECRYPT, ENCRYPT
from xks_proxy.config import (
    Pkcs11BackendConfig,
    TokenSelector,
    resolve_secret,
)
from xks_proxy.config_key_stores import require_uri_path
from xks_proxy.credentials import CredentialsFile, generate_credential, write_private_file
from xks_proxy.devcert import self_signed
from xks_proxy.errors import ConfigError
from xks_proxy.kek_config import Kek, Pkcs11Kek, parse_kek_setting
from xks_proxy.keystore.location import StoreLocation
from xks_proxy.keystore.store import KeyDatabase

CONFIG_NAME = "xks-proxy.toml"
KEK_NAME = "kek.key"
KEY_DB_NAME = "keys.db"
CREDENTIALS_NAME = "credentials.json"
AUDIT_NAME = "audit.log"
ADMIN_PRIVATE_KEY = "admin/dev-signing.key"
ADMIN_PUBLIC_KEY = "admin/dev-signing.pem"
TLS_CERT_NAME = "tls/server.pem"
TLS_KEY_NAME = "tls/server.key"

TLS_TEMPLATE = """\
# A self-signed development certificate. KMS needs one from a CA on its trusted list.
[tls]
certificate = "{certificate}"
private_key = "{private_key}"

"""

CONFIG_TEMPLATE = """\
# xks-proxy configuration, made by `xks-proxy init`. Reference: config/xks-proxy.example.toml.
# Relative paths are relative to this file.

# SigV4 credentials managed by `xks-proxy credentials create|list|revoke` (a 0600 JSON file).
credentials_file = "{credentials}"

[server]
host = "127.0.0.1"
port = {port}
max_body_bytes = 65536

[metrics]
enabled = true
host = "127.0.0.1"
port = {metrics_port}

[audit]
enabled = true
path = "{audit}"

[health]
interval_seconds = 15
fleet_size = 1

{admin}{backend_section}
{tls}[[key_stores]]
name = "{name}"
uri_path = "{uri_path}"
region = "{region}"
backend = "{backend}"
keys = ["*"]
"""

ADMIN_TEMPLATE = """\
# The admin API (JSON under /admin/v1/), on loopback only. Tokens here are signed by a
# development key made by init: mint one with
#   xks-proxy admin token --config {config} --role key-admin --ttl 15m
# In production, name your identity provider's issuer and jwks_url instead, and delete
# {private_key}.
[admin]
enabled = true
host = "127.0.0.1"
port = {admin_port}

[admin.auth]
issuers = ["{issuer}"]
audience = "{audience}"
public_keys = ["{public_key}"]

"""

SOFTWARE_TEMPLATE = """\
[backends.local]
type = "software"
{key_store_line}
{kek_lines}
"""
FILE_KEK_LINES = """\
# Key-encryption key: Base64 of 32 bytes, here read from a 0600 file.
kek = "file:{kek}"\
"""
PKCS11_KEK_LINES = """\
# Key-encryption key: an AES key in a PKCS#11 token that wraps every key version; the PIN is
# read from pin-source when the proxy starts, never logged.
kek = {uri}\
"""

PKCS11_TEMPLATE = """\
[backends.hsm]
type = "pkcs11"
module = "{module}"
tokens = [{{ label = "{token_label}" }}]
# The token's user PIN, read from the environment when the proxy starts; never logged.
user_pin = "env:{pin_env}"
health_key_label = "{health_label}"
# Keys made by `xks-proxy pkcs11 create-key`; the kill switch is `disabled_keys` below.
"""


@dataclass(frozen=True, slots=True)
class Pkcs11Setup:
    """``init --backend pkcs11``: which module and token, and where the PIN comes from."""

    module: Path
    token_label: str
    pin_env: str


@dataclass(frozen=True, slots=True)
class Scaffold:
    config_path: Path
    # Where the keys are: "keys.db under kek.key (0600)", or "token 'xks' of MODULE".
    key_location: str
    credentials_path: Path
    key_id: str
    key_store: str
    uri_path: str
    access_key_id: str
    tls: bool


class AlreadyInitialisedError(Exception):
    pass


def scaffold(
    directory: Path,
    *,
    name: str = "dev",
    region: str = "us-east-1",
    key_id: str | None = None,
    port: int = 8080,
    metrics_port: int = 9464,
    admin_port: int = 9443,
    force: bool = False,
    tls: bool = False,
    hsm: Pkcs11Setup | None = None,
    environ: Mapping[str, str] | None = None,
    database_url: str | None = None,
    kek: str | None = None,
) -> Scaffold:
    # Checked before anything is written: a name that makes an unusable path (a dot in it)
    # would leave a configuration that never loads.
    uri_path = require_uri_path(f"/keystores/{name}/kms/xks/v1", "--name")
    paths = {n: directory / n for n in (CONFIG_NAME, KEK_NAME, KEY_DB_NAME, CREDENTIALS_NAME)}
    existing = [p for p in paths.values() if p.exists()]
    if existing and not force:
        raise AlreadyInitialisedError(f"{existing[0]} exists (use --force to overwrite)")
    key_id = key_id or str(uuid.uuid4())
    if hsm is not None:
        # Before any file is written: a wrong PIN or token leaves nothing behind.
        backend_section, key_location = _provision_token(
            hsm, key_id, os.environ if environ is None else environ
        )
    # Also before any file is written: the HSM KEK's token, PIN and label are proved here.
    hsm_kek = _hsm_kek(kek, directory, os.environ if environ is None else environ) if kek else None
    directory.mkdir(parents=True, exist_ok=True)
    for stale in (*paths.values(), *(directory / f"{KEY_DB_NAME}-{s}" for s in ("wal", "shm"))):
        stale.unlink(missing_ok=True)
    if hsm is None:
        backend_section, key_location = _software_key_store(
            paths, key_id, database_url, hsm_kek, os.environ if environ is None else environ
        )

    credential = generate_credential()
    CredentialsFile(paths[CREDENTIALS_NAME]).add(name, credential)
    tls_section = ""
    if tls:
        certificate, private_key = self_signed()
        (directory / TLS_CERT_NAME).parent.mkdir(exist_ok=True)
        (directory / TLS_CERT_NAME).write_bytes(certificate)
        write_private_file(directory / TLS_KEY_NAME, private_key.decode())
        tls_section = TLS_TEMPLATE.format(certificate=TLS_CERT_NAME, private_key=TLS_KEY_NAME)
    admin_section = _admin_section(directory, admin_port)
    paths[CONFIG_NAME].write_text(
        CONFIG_TEMPLATE.format(
            admin=admin_section,
            credentials=CREDENTIALS_NAME,
            port=port,
            metrics_port=metrics_port,
            audit=AUDIT_NAME,
            backend_section=backend_section,
            backend="local" if hsm is None else "hsm",
            name=name,
            uri_path=uri_path,
            region=region,
            tls=tls_section,
        )
    )
    return Scaffold(
        config_path=paths[CONFIG_NAME],
        key_location=key_location,
        credentials_path=paths[CREDENTIALS_NAME],
        key_id=key_id,
        key_store=name,
        uri_path=uri_path,
        access_key_id=credential.access_key_id,
        tls=tls,
    )


def _admin_section(directory: Path, admin_port: int) -> str:
    from xks_proxy.admin.devtoken import DEV_AUDIENCE, DEV_ISSUER, make_signing_key

    (directory / ADMIN_PRIVATE_KEY).parent.mkdir(exist_ok=True)
    make_signing_key(directory / ADMIN_PRIVATE_KEY, directory / ADMIN_PUBLIC_KEY)
    return ADMIN_TEMPLATE.format(
        config=directory / CONFIG_NAME,
        private_key=ADMIN_PRIVATE_KEY,
        admin_port=admin_port,
        issuer=DEV_ISSUER,
        audience=DEV_AUDIENCE,
        public_key=ADMIN_PUBLIC_KEY,
    )


def _software_key_store(
    paths: Mapping[str, Path],
    key_id: str,
    database_url: str | None,
    hsm_kek: Pkcs11Kek | None,
    environ: Mapping[str, str],
) -> tuple[str, str]:
    kek: Kek
    if hsm_kek is None:
        kek = secrets.token_bytes(32)
        write_private_file(paths[KEK_NAME], base64.b64encode(kek).decode() + "\n")
        kek_lines, kek_name = FILE_KEK_LINES.format(kek=KEK_NAME), f"{paths[KEK_NAME]} (0600)"
    else:
        kek = hsm_kek
        kek_lines, kek_name = PKCS11_KEK_LINES.format(uri=json.dumps(kek.uri)), str(kek)
    if database_url is None:
        location = StoreLocation.parse(paths[KEY_DB_NAME])
        key_store_line = f'path = "{KEY_DB_NAME}"'
    else:
        directory = paths[KEK_NAME].parent
        resolved = resolve_secret(database_url, "--database-url", directory, environ)
        location = StoreLocation.parse(resolved)
        key_store_line = f"database_url = {json.dumps(database_url)}"
    database = KeyDatabase(location, kek)
    try:
        database.ensure_health_key()
        database.create_key(key_id, frozenset({ENCRYPT, DECRYPT}))
    finally:
        database.close()
    section = SOFTWARE_TEMPLATE.format(key_store_line=key_store_line, kek_lines=kek_lines)
    return section, f"{location.display} under {kek_name}"


def _hsm_kek(uri: str, directory: Path, environ: Mapping[str, str]) -> Pkcs11Kek:
    """The KEK a ``pkcs11:`` URI names, made in the token if it has none by that label."""
    from xks_proxy.keystore import hsm_kek  # python-pkcs11 only for HSM KEKs

    kek = parse_kek_setting(uri, "--kek", directory, environ)
    if not isinstance(kek, Pkcs11Kek):
        raise ConfigError("--kek: a pkcs11: URI (init writes a file KEK without it)")
    with contextlib.suppress(FileExistsError):
        hsm_kek.create_kek(kek)
    hsm_kek.HsmKeySealer(kek, "--kek").close()  # proves it wraps and unwraps
    return kek


def _provision_token(hsm: Pkcs11Setup, key_id: str, environ: Mapping[str, str]) -> tuple[str, str]:
    """Log in as the proxy will, and make the health key and the first key where missing."""
    from xks_proxy import pkcs11_admin  # python-pkcs11 only for HSM deployments

    if not hsm.module.is_file():
        raise ConfigError(f"--module: {hsm.module} is not a file")
    pin = environ.get(hsm.pin_env)
    if not pin:
        raise ConfigError(f"--pin-env: {hsm.pin_env} is not set (export the token's user PIN)")
    backend = Pkcs11BackendConfig(
        name="hsm",
        module=hsm.module,
        tokens=(TokenSelector(label=hsm.token_label),),
        user_pin=pin,
    )
    token = backend.tokens[0]
    present = {key.label for key in pkcs11_admin.list_keys(backend, token)}
    for label in (backend.health_key_label, key_id):
        if label not in present:
            pkcs11_admin.create_key(backend, token, label, frozenset({ENCRYPT, DECRYPT}))
    section = PKCS11_TEMPLATE.format(
        module=hsm.module,
        token_label=hsm.token_label,
        pin_env=hsm.pin_env,
        health_label=backend.health_key_label,
    )
    return section, f"token {hsm.token_label!r} of {hsm.module}"
