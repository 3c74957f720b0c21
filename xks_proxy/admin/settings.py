"""The ``[admin.auth]`` table: who may sign admin tokens and what their roles are called.

```toml
[admin.auth]
issuers = ["https://idp.example.com/"]     # the allow-list of ``iss`` values
audience = "xks-proxy-admin"               # ``aud`` must contain it
leeway_seconds = 30                        # clock skew allowed on exp, nbf, iat (0-300)
max_lifetime_seconds = 86400               # exp - iat at most this
roles_claim = "groups"                     # default "roles"
public_keys = ["admin-signing.pem"]        # PEM public keys; kid = file name without extension
jwks_file = "jwks.json"                    # and/or a JWKS document
jwks_url = "https://idp.example.com/.well-known/jwks.json"   # and/or the provider's jwks_uri

[admin.auth.role_names]                    # optional: provider group → role
"kms-custodians" = "key-admin"
```

At least one key source is required. Paths are relative to the configuration file. A JWKS URL
must be https (plain http only on loopback, for development and tests): keys fetched over an
unauthenticated channel would let anyone on the path mint admin tokens. ``config.load_config``
reads it as part of ``[admin]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from xks_proxy.admin.http import AdminGuard
from xks_proxy.admin.keys import KeySource, load_jwks, load_pem_keys
from xks_proxy.admin.roles import DEFAULT_ROLES_CLAIM, RoleMapper
from xks_proxy.admin.tokens import (
    DEFAULT_LEEWAY_SECONDS,
    DEFAULT_MAX_LIFETIME_SECONDS,
    TokenPolicy,
    TokenVerifier,
)
from xks_proxy.config_server import LOOPBACK_HOSTS
from xks_proxy.config_table import Table
from xks_proxy.errors import ConfigError

MAX_LEEWAY_SECONDS = 300


@dataclass(frozen=True, slots=True)
class AdminAuthConfig:
    policy: TokenPolicy
    roles_claim: str = DEFAULT_ROLES_CLAIM
    role_names: dict[str, str] | None = field(default=None, hash=False)
    public_keys: tuple[Path, ...] = ()
    jwks_file: Path | None = None
    jwks_url: str | None = None


def _strings(table: Table, key: str) -> list[str]:
    values = table.get(key, list, [])
    if not all(isinstance(value, str) and value for value in values):
        raise ConfigError(f"{table.where(key)}: a list of non-empty strings")
    return values


def _jwks_url(table: Table) -> str | None:
    url = table.get("jwks_url", str, "")
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS):
        return url
    raise ConfigError(f"{table.where('jwks_url')}: must be an https URL (http only on loopback)")


def parse_admin_auth(data: Any, where: str, base_dir: Path) -> AdminAuthConfig:
    table = Table(data, where)
    issuers = _strings(table, "issuers")
    if not issuers:
        raise ConfigError(f"{table.where('issuers')}: at least one issuer is required")
    audience = table.require("audience")
    leeway = table.ranged("leeway_seconds", DEFAULT_LEEWAY_SECONDS, 0, MAX_LEEWAY_SECONDS)
    lifetime = table.ranged(
        "max_lifetime_seconds", DEFAULT_MAX_LIFETIME_SECONDS, 60, 7 * DEFAULT_MAX_LIFETIME_SECONDS
    )
    roles_claim = table.get("roles_claim", str, DEFAULT_ROLES_CLAIM)
    raw_names = table.get("role_names", dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in raw_names.items()):
        raise ConfigError(f"{table.where('role_names')}: a table of group = role strings")
    public_keys = tuple(base_dir / name for name in _strings(table, "public_keys"))
    jwks_name = table.get("jwks_file", str, "")
    jwks_url = _jwks_url(table)
    table.done()
    if not (public_keys or jwks_name or jwks_url):
        raise ConfigError(f"{where}: name public_keys, jwks_file or jwks_url")
    return AdminAuthConfig(
        policy=TokenPolicy(tuple(issuers), audience, leeway, lifetime),
        roles_claim=roles_claim,
        role_names=raw_names or None,
        public_keys=public_keys,
        jwks_file=base_dir / jwks_name if jwks_name else None,
        jwks_url=jwks_url,
    )


def build_guard(config: AdminAuthConfig, where: str = "admin.auth") -> AdminGuard:
    """Load the keys and build the guard; ``ConfigError`` names the unusable file or setting."""
    try:
        static = load_pem_keys(config.public_keys)
        if config.jwks_file is not None:
            static.update(load_jwks(config.jwks_file.read_text(), str(config.jwks_file)))
        mapper = RoleMapper(config.roles_claim, config.role_names)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{where}: {error}") from None
    verifier = TokenVerifier(config.policy, KeySource(static, jwks_url=config.jwks_url))
    return AdminGuard(verifier, mapper)
