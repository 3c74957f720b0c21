"""``xks-proxy init``: a ready-to-run deployment in one folder.

It holds a configuration file, a key-encryption key (0600), an embedded key store with one
ENCRYPT+DECRYPT key, and a credentials file (0600) with one fresh SigV4 credential for one key
store whose URI path has a non-empty prefix, ``/keystores/<name>/kms/xks/v1``.

With ``database_url`` the keys go to a shared PostgreSQL store instead of ``keys.db``, and the
configuration names that URL exactly as given: pass ``env:NAME`` to keep a password out of the
file (it is resolved now to create the keys, and by every proxy at start).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

from xks_proxy.backends.base import DECRYPT, ENCRYPT
from xks_proxy.config import resolve_secret
from xks_proxy.credentials import CredentialsFile, generate_credential, write_private_file
from xks_proxy.devcert import self_signed
from xks_proxy.keystore.location import StoreLocation
from xks_proxy.keystore.store import KeyDatabase

CONFIG_NAME = "xks-proxy.toml"
KEK_NAME = "kek.key"
KEY_DB_NAME = "keys.db"
CREDENTIALS_NAME = "credentials.json"
AUDIT_NAME = "audit.log"
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

[backends.local]
type = "software"
{key_store_line}
# Key-encryption key: Base64 of 32 bytes, here read from a 0600 file.
kek = "file:{kek}"

{tls}[[key_stores]]
name = "{name}"
uri_path = "/keystores/{name}/kms/xks/v1"
region = "{region}"
backend = "local"
keys = ["*"]
"""


@dataclass(frozen=True, slots=True)
class Scaffold:
    config_path: Path
    kek_path: Path
    key_db_path: Path
    key_store_location: str
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
    force: bool = False,
    tls: bool = False,
    database_url: str | None = None,
) -> Scaffold:
    paths = {n: directory / n for n in (CONFIG_NAME, KEK_NAME, KEY_DB_NAME, CREDENTIALS_NAME)}
    existing = [p for p in paths.values() if p.exists()]
    if existing and not force:
        raise AlreadyInitialisedError(f"{existing[0]} exists (use --force to overwrite)")
    directory.mkdir(parents=True, exist_ok=True)
    for stale in (*paths.values(), *(directory / f"{KEY_DB_NAME}-{s}" for s in ("wal", "shm"))):
        stale.unlink(missing_ok=True)

    kek = secrets.token_bytes(32)
    write_private_file(paths[KEK_NAME], base64.b64encode(kek).decode() + "\n")
    key_id = key_id or str(uuid.uuid4())
    if database_url is None:
        location = StoreLocation.parse(paths[KEY_DB_NAME])
        key_store_line = f'path = "{KEY_DB_NAME}"'
    else:
        resolved = resolve_secret(database_url, "--database-url", directory, os.environ)
        location = StoreLocation.parse(resolved)
        key_store_line = f"database_url = {json.dumps(database_url)}"
    database = KeyDatabase(location, kek)
    try:
        database.ensure_health_key()
        database.create_key(key_id, frozenset({ENCRYPT, DECRYPT}))
    finally:
        database.close()
    credential = generate_credential()
    CredentialsFile(paths[CREDENTIALS_NAME]).add(name, credential)
    tls_section = ""
    if tls:
        certificate, private_key = self_signed()
        (directory / TLS_CERT_NAME).parent.mkdir(exist_ok=True)
        (directory / TLS_CERT_NAME).write_bytes(certificate)
        write_private_file(directory / TLS_KEY_NAME, private_key.decode())
        tls_section = TLS_TEMPLATE.format(certificate=TLS_CERT_NAME, private_key=TLS_KEY_NAME)
    paths[CONFIG_NAME].write_text(
        CONFIG_TEMPLATE.format(
            credentials=CREDENTIALS_NAME,
            port=port,
            metrics_port=metrics_port,
            audit=AUDIT_NAME,
            key_store_line=key_store_line,
            kek=KEK_NAME,
            name=name,
            region=region,
            tls=tls_section,
        )
    )
    return Scaffold(
        config_path=paths[CONFIG_NAME],
        kek_path=paths[KEK_NAME],
        key_db_path=paths[KEY_DB_NAME],
        key_store_location=location.display,
        credentials_path=paths[CREDENTIALS_NAME],
        key_id=key_id,
        key_store=name,
        uri_path=f"/keystores/{name}/kms/xks/v1",
        access_key_id=credential.access_key_id,
        tls=tls,
    )
