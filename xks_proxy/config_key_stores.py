"""The ``[[key_stores]]`` sections: what a key store serves (URI path, region, backend, keys),
its SigV4 credentials (inline, in the ``credentials_file``, or in a backend's key store), its
quota, kill switch and authorization policy; and the checks across key stores.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from xks_proxy.config_backends import BackendConfig, SoftwareBackendConfig
from xks_proxy.config_table import Table, resolve_secret, validate_credential
from xks_proxy.errors import ConfigError
from xks_proxy.model import key_id_problem
from xks_proxy.sigv4 import Credential
from xks_proxy.validation import DOT_SEGMENTS, NAME_PATTERN, uri_path_problem

REGION_PATTERN = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
KEY_PATTERN_PATTERN = re.compile(r"[A-Za-z0-9._*?\[\]-]{1,128}")

# ``authorization_policy = "database"``: the policy is kept in the key store database, not a file.
POLICY_IN_STORE = "database"


@dataclass(frozen=True, slots=True)
class KeyStoreConfig:
    name: str
    uri_path: str
    region: str
    backend: str
    key_patterns: tuple[str, ...]
    credentials: tuple[Credential, ...]
    # xks-spec §2.1: a proxy MAY enforce a per-key-store quota (429 ThrottlingException).
    requests_per_second: float | None = None
    burst: int | None = None
    # A kill switch that works for every backend: these keys report DISABLED and refuse crypto.
    disabled_keys: frozenset[str] = frozenset()
    # xks-spec §6.5: a Cedar policy file (authz/); parsed when a runtime is built, so start-up,
    # reload and check-config refuse a bad one. None: every authenticated request is allowed.
    authorization_policy: Path | None = None
    # ``authorization_policy = "database"``: the policy text lives in the key store database of
    # the key store's software backend (authz/stored.py), shared by every proxy of a fleet.
    authorization_policy_in_store: bool = False
    # ``credentials_store = "database"``: the software backend whose key store holds this key
    # store's managed credentials. None: they are in ``credentials_file``.
    credentials_backend: str | None = None


def _inline_credentials(
    table: Table, base_dir: Path, environ: Mapping[str, str]
) -> list[Credential]:
    raw = table.get("credentials", list, [])
    credentials = []
    for index, item in enumerate(raw):
        entry = Table(item, f"{table.where('credentials')}[{index}]")
        secret_where = entry.where("secret_access_key")
        secret = resolve_secret(entry.require("secret_access_key"), secret_where, base_dir, environ)
        credentials.append(validate_credential(entry.require("access_key_id"), secret, entry.path))
        entry.done()
    return credentials


def require_uri_path(uri_path: str, where: str) -> str:
    """``uri_path`` if a key store may serve under it; else ConfigError."""
    if problem := uri_path_problem(uri_path):
        raise ConfigError(f"{where}: {uri_path!r} {problem}")
    return uri_path


def require_key_id(key_id: str, where: str) -> str:
    """``key_id`` if an external key may be created or configured under it; else ConfigError."""
    problem = key_id_problem(key_id)
    if problem:
        raise ConfigError(f"{where}: {problem}")
    return key_id


def _refuse_dot_segments(key_ids: list[str], where: str) -> None:
    for key_id in key_ids:
        if key_id in DOT_SEGMENTS:
            require_key_id(key_id, where)


def parse_key_store(
    table: Table,
    backends: Collection[str],
    extra_credentials: Mapping[str, list[Credential]],
    base_dir: Path,
    environ: Mapping[str, str],
) -> KeyStoreConfig:
    name = table.require("name")
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"{table.where('name')}: 1-64 characters of A-Z a-z 0-9 . _ -")
    uri_path = require_uri_path(table.require("uri_path"), table.where("uri_path"))
    region = table.require("region")
    if not REGION_PATTERN.fullmatch(region):
        raise ConfigError(f"{table.where('region')}: not an AWS region name like us-east-1")
    backend = table.require("backend")
    if backend not in backends:
        raise ConfigError(f"{table.where('backend')}: no backend named {backend!r}")
    patterns = table.get("keys", list, ["*"])
    if not patterns or not all(
        isinstance(p, str) and KEY_PATTERN_PATTERN.fullmatch(p) for p in patterns
    ):
        raise ConfigError(f"{table.where('keys')}: a non-empty list of key ids or glob patterns")
    _refuse_dot_segments(patterns, table.where("keys"))
    credentials_backend = _credentials_backend(table, backend, backends)
    if credentials_backend is not None and name in extra_credentials:
        raise ConfigError(
            f"credentials_file: holds credentials of key store {name}, whose credentials_store "
            "is database; add them to the database (xks-proxy credentials add) and remove them "
            "from the file"
        )
    credentials = _inline_credentials(table, base_dir, environ) + extra_credentials.get(name, [])
    rate = table.get("requests_per_second", float, 0.0)
    if rate < 0:
        raise ConfigError(f"{table.where('requests_per_second')}: must not be negative")
    burst = table.ranged("burst", max(1, int(rate)), 1, 1_000_000)
    disabled = table.get("disabled_keys", list, [])
    if not all(isinstance(k, str) and KEY_PATTERN_PATTERN.fullmatch(k) for k in disabled):
        raise ConfigError(f"{table.where('disabled_keys')}: a list of key ids")
    _refuse_dot_segments(disabled, table.where("disabled_keys"))
    policy = table.get("authorization_policy", str, "")
    in_store = policy == POLICY_IN_STORE
    table.done()
    return KeyStoreConfig(
        name=name,
        uri_path=uri_path,
        region=region,
        backend=backend,
        key_patterns=tuple(patterns),
        credentials=tuple(credentials),
        requests_per_second=rate or None,
        burst=burst if rate else None,
        disabled_keys=frozenset(disabled),
        authorization_policy=base_dir / policy if policy and not in_store else None,
        authorization_policy_in_store=in_store,
        credentials_backend=credentials_backend,
    )


CREDENTIALS_STORES = ("file", "database")


def _credentials_backend(table: Table, backend: str, backends: Collection[str]) -> str | None:
    """The backend whose key store holds the credentials (``"database"``), or None (file)."""
    kind = table.get("credentials_store", str, "file")
    if kind not in CREDENTIALS_STORES:
        raise ConfigError(f"{table.where('credentials_store')}: must be file or database")
    name = table.get("credentials_backend", str, "")
    if kind == "file":
        if name:
            raise ConfigError(
                f'{table.where("credentials_backend")}: only with credentials_store = "database"'
            )
        return None
    name = name or backend
    if name not in backends:
        raise ConfigError(f"{table.where('credentials_backend')}: no backend named {name!r}")
    return name


def read_credentials_file(path: Path) -> dict[str, list[Credential]]:
    """Credentials managed by ``xks-proxy credentials``, grouped by key store name."""
    if not path.exists():
        return {}
    try:
        document = json.loads(path.read_text())
        entries = document["credentials"]
        grouped: dict[str, list[Credential]] = {}
        for index, entry in enumerate(entries):
            where = f"{path.name}: credentials[{index}]"
            credential = validate_credential(
                entry["access_key_id"], entry["secret_access_key"], where
            )
            grouped.setdefault(entry["key_store"], []).append(credential)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(
            f"credentials_file: {path} is not a valid credentials file ({error!r})"
        ) from None
    return grouped


def check_unique_key_stores(stores: list[KeyStoreConfig]) -> None:
    seen_names: set[str] = set()
    seen_paths: set[str] = set()
    seen_ids: set[str] = set()
    for index, store in enumerate(stores):
        if store.name in seen_names:
            raise ConfigError(f"key_stores[{index}].name: {store.name!r} is used twice")
        if store.uri_path in seen_paths:
            raise ConfigError(f"key_stores[{index}].uri_path: {store.uri_path!r} is used twice")
        for credential in store.credentials:
            # XKS spec §6.2: an access key id identifies exactly one secret.
            if credential.access_key_id in seen_ids:
                raise ConfigError(
                    f"key_stores[{index}].credentials: access key id "
                    f"{credential.access_key_id} is used twice"
                )
            seen_ids.add(credential.access_key_id)
        seen_names.add(store.name)
        seen_paths.add(store.uri_path)


def check_credential_backends(
    stores: list[KeyStoreConfig], backends: Mapping[str, BackendConfig]
) -> None:
    for index, store in enumerate(stores):
        backend = backends.get(store.credentials_backend or "")
        name = store.credentials_backend
        if backend is not None and not isinstance(backend, SoftwareBackendConfig):
            raise ConfigError(
                f"key_stores[{index}].credentials_backend: {name} is not a software backend, "
                "and only a software backend's key store holds credentials"
            )
