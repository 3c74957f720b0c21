"""Configuration: one TOML file read into frozen dataclasses and validated before any port opens.

Every error is a ``ConfigError`` whose message starts with the TOML path of the bad key
(``key_stores[0].region: ...``). Unknown keys are errors, so a typo never silently falls back to
a default.

Secrets (the key-encryption key, SigV4 secrets) may be written inline or by reference:
``env:NAME`` reads an environment variable, ``file:PATH`` reads a file (relative paths are
relative to the configuration file; one trailing newline is dropped). Secret values in the spec's
alphabets never contain ``:``, so the prefixes are unambiguous. A software backend's ``kek`` may
instead be a ``pkcs11:`` URI naming an AES key in an HSM (``kek_config``).

Commands that never touch a backend (``reload``, ``kms-config``, ``credentials …``) load the
file with ``with_backends=False``: backend tables are then only named, not parsed, so those
commands need none of the backends' secrets (an HSM PIN in ``env:``, the KEK) in the operator's
environment. Their ``Config.backends`` is empty.

SigV4 credentials come from two places, merged: ``[[key_stores.credentials]]`` tables in the TOML
(for configuration managed as code, secrets by reference) and the place the ``xks-proxy
credentials`` commands manage, which a key store's ``credentials_store`` chooses: ``"file"`` (the
default) is the JSON ``credentials_file`` of this host; ``"database"`` is the key store of a
software backend (``credentials_backend``, default the key store's own backend), which every
proxy of a fleet shares (``keystore/credentials.py``). Stored credentials are known only once
that backend is open, so ``ProxyRuntime.open`` checks that such a key store has one.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from xks_proxy import __version__, validation
from xks_proxy.errors import ConfigError
from xks_proxy.model import key_id_problem
from xks_proxy.sigv4 import Credential
from xks_proxy.validation import (
    DOT_SEGMENTS,
    access_key_id_problem,
    secret_problem,
    uri_path_problem,
)

if TYPE_CHECKING:
    from xks_proxy.admin.settings import AdminAuthConfig
    from xks_proxy.kek_config import Kek

NAME_PATTERN = validation.NAME_PATTERN  # key store and backend names; the CLI's --name too
REGION_PATTERN = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
KEY_PATTERN_PATTERN = re.compile(r"[A-Za-z0-9._*?\[\]-]{1,128}")
# Room for the spec's minimum sizes in one body: 5736 Base64 characters of plaintext, 10924 of
# AAD, two 2048-character ARNs and the JSON around them (xks-spec §1, §4.2).
MIN_BODY_BYTES = 32 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
# XKS spec §4.4: a cached deep-health result must not be older than one minute.
MAX_HEALTH_INTERVAL = 55
KEK_BYTES = 32

T = TypeVar("T")


# No slots: the class attributes serve as the documented defaults below.
@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 64 * 1024
    workers: int = 1
    # Where `serve` writes its process id, for `xks-proxy reload`; relative to the config file.
    pid_file: str = "xks-proxy.pid"
    # Plain-HTTP GET /ping listener for load balancers that cannot present a client certificate.
    ping_host: str = "0.0.0.0"  # noqa: S104 - a load balancer probes from outside
    ping_port: int | None = None
    drain_seconds: float = 10.0
    # On SIGTERM: /ping answers 503 and the proxy keeps serving this long before it stops
    # accepting, so a load balancer moves traffic away first (SIGINT skips it).
    shutdown_delay_seconds: float = 5.0
    # XKS spec §9.1: KMS gives up after 250 ms; answering before that lets KMS see the reason.
    request_deadline_ms: int = 200
    max_concurrent_requests: int = 1024
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 10.0
    idle_timeout_seconds: float = 120.0


# No slots: the class attributes serve as the documented defaults below.
@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9464


# No slots: the class attributes serve as the documented defaults below.
@dataclass(frozen=True)
class AuditConfig:
    enabled: bool = True
    # "-" writes to standard output.
    path: str = "-"
    # What a request gets when its audit line cannot be written (see ``AUDIT_ON_FAILURE``).
    on_failure: str = "continue"


# "continue": the answer still goes out (the failure is counted and logged). "refuse": a
# successful answer is replaced by 500 InternalException, for sites whose rule is "no audit, no
# crypto"; error answers go out as they are, since they release nothing.
AUDIT_ON_FAILURE = ("continue", "refuse")


# No slots: the class attributes serve as the documented defaults below.
@dataclass(frozen=True)
class HealthConfig:
    interval_seconds: float = 15.0
    fleet_size: int = 1
    proxy_vendor: str = "xks-proxy"
    proxy_model: str = f"xks-proxy {__version__}"
    ekm_vendor: str | None = None
    # /ping answers 503 while every EKM of every backend is UNAVAILABLE (see web/readiness.py).
    ping_fails_when_ekms_unavailable: bool = True


# ``authorization_policy = "database"``: the policy is kept in the key store database, not a file.
POLICY_IN_STORE = "database"


@dataclass(frozen=True, slots=True)
class MutualTlsConfig:
    ca_bundle: Path
    # XKS spec §6.4: KMS presents CN = cks.kms.<region>.amazonaws.com.
    allowed_common_names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TlsConfig:
    certificate: Path
    private_key: Path
    private_key_password: str | None = field(default=None, repr=False)
    expiry_warning_days: int = 30
    client_auth: MutualTlsConfig | None = None


@dataclass(frozen=True, slots=True)
class SoftwareBackendConfig:
    name: str
    # Exactly one of the two: an SQLite file, or a PostgreSQL URL (which may hold a password).
    path: Path | None
    # 32 bytes, or an AES key in an HSM (``kek_config``: ``kek = "pkcs11:…"``).
    kek: Kek = field(repr=False)
    database_url: str | None = field(default=None, repr=False)
    # Unsealed key versions kept ready (about 2.5 KiB each); the rest stay sealed in memory.
    key_cache_size: int = 10_000
    type: str = "software"
    # Added latency on every key operation, for drills of deadlines and alarms; 0 in production.
    fault_delay_ms: int = 0


@dataclass(frozen=True, slots=True)
class TokenSelector:
    """Which PKCS#11 token: by label or by serial number, never "the first slot"."""

    label: str | None = None
    serial: str | None = None

    def __str__(self) -> str:
        return f"label {self.label!r}" if self.label is not None else f"serial {self.serial!r}"


@dataclass(frozen=True, slots=True)
class Pkcs11BackendConfig:
    name: str
    module: Path
    tokens: tuple[TokenSelector, ...]
    user_pin: str = field(repr=False)
    # How an XKS key id names an HSM object: its CKA_LABEL, or its CKA_ID (the id's UTF-8 bytes).
    key_lookup: str = "label"
    health_key_label: str = "xks-proxy-health"
    sessions: int = 8
    session_wait_ms: int = 100
    # "proxy": the proxy draws each IV from the OS CSPRNG; "token": the HSM writes it (CloudHSM,
    # Luna in FIPS mode), and a token that leaves it unwritten is an error, never IV reuse.
    iv_source: str = "proxy"
    vendor: str | None = None
    model: str | None = None
    type: str = "pkcs11"
    # Only for a module that answers in process in microseconds (SoftHSM2): its calls run on
    # the event loop thread, skipping the hop to a thread; a slow call would stall the worker
    # and the request deadline could not interrupt it (backends/pkcs11.py).
    calls_on_event_loop: bool = False
    fault_delay_ms: int = 0


BackendConfig = SoftwareBackendConfig | Pkcs11BackendConfig


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


# No slots: the class attributes serve as the documented defaults below.
@dataclass(frozen=True)
class AdminConfig:
    """``[admin]``: the admin API's own listener (issue 13), never the XKS port.

    Off unless ``enabled``. Loopback by default; any other address needs ``[admin.tls]``, since
    bearer tokens must not cross a network in clear. ``[admin.tls]`` takes the keys of ``[tls]``
    (``client_auth`` for mutual TLS, whose ``allowed_common_names`` must then be given: there is
    no AWS default for admin clients). ``auth`` is the ``[admin.auth]`` table (admin/settings.py).
    """

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9443
    tls: TlsConfig | None = None
    auth: AdminAuthConfig | None = None


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    server: ServerConfig
    metrics: MetricsConfig
    audit: AuditConfig
    health: HealthConfig
    backends: Mapping[str, BackendConfig]
    key_stores: tuple[KeyStoreConfig, ...]
    credentials_file: Path | None
    tls: TlsConfig | None = None
    admin: AdminConfig = AdminConfig()

    @property
    def pid_path(self) -> Path:
        return self.path.parent / self.server.pid_file

    def check_serving(self) -> None:
        """What serving needs beyond a well-formed file; start-up and reload both call this."""
        for index, store in enumerate(self.key_stores):
            # Stored credentials are read when the backend opens (``ProxyRuntime.open``).
            if not store.credentials and store.credentials_backend is None:
                raise ConfigError(
                    f"key_stores[{index}]: key store {store.name} has no credential, so every "
                    "request would be refused (xks-proxy credentials add|create)"
                )

    def key_store(self, name_or_path: str | None) -> KeyStoreConfig:
        """Find a key store by name or URI path; ``None`` picks the only one."""
        if name_or_path is None:
            if len(self.key_stores) != 1:
                raise ConfigError("several key stores are configured: name one with --key-store")
            return self.key_stores[0]
        for store in self.key_stores:
            if name_or_path in (store.name, store.uri_path):
                return store
        raise ConfigError(f"no key store named {name_or_path!r}")


class _Table:
    """A TOML table read key by key; ``done()`` rejects the keys nobody asked for."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: must be a table")
        self.data: dict[str, Any] = data
        self.path = path
        self._seen: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kind: type[T], default: T) -> T:
        self._seen.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{self.where(key)}: must be a {kind.__name__}")
        return value

    def require(self, key: str) -> str:
        if key not in self.data:
            raise ConfigError(f"{self.where(key)}: is required")
        return self.get(key, str, "")

    def ranged(self, key: str, default: int, low: int, high: int) -> int:
        value = self.get(key, int, default)
        if not low <= value <= high:
            raise ConfigError(f"{self.where(key)}: must be between {low} and {high}")
        return value

    def seconds(self, key: str, default: float, low: float, high: float) -> float:
        value = self.get(key, float, default)
        if not low <= value <= high:
            raise ConfigError(f"{self.where(key)}: must be between {low} and {high}")
        return value

    def optional_port(self, key: str) -> int | None:
        return self.ranged(key, 0, 0, 65535) if key in self.data else None

    def done(self) -> None:
        unknown = sorted(set(self.data) - self._seen)
        if unknown:
            raise ConfigError(f"{self.where(unknown[0])}: unknown key")


def resolve_secret(value: str, where: str, base_dir: Path, environ: Mapping[str, str]) -> str:
    """Resolve an inline, ``env:NAME`` or ``file:PATH`` secret."""
    if value.startswith("env:"):
        name = value[4:]
        if name not in environ:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return environ[name]
    if value.startswith("file:"):
        path = base_dir / value[5:]
        try:
            text = path.read_text()
        except OSError as error:
            raise ConfigError(f"{where}: cannot read {path}: {error.strerror}") from None
        return text.removesuffix("\n")
    return value


def parse_kek(text: str, where: str) -> bytes:
    try:
        kek = base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        kek = b""
    if len(kek) != KEK_BYTES:
        raise ConfigError(f"{where}: must be the Base64 encoding of 32 bytes")
    return kek


def validate_credential(access_key_id: str, secret: str, where: str) -> Credential:
    if problem := access_key_id_problem(access_key_id):
        raise ConfigError(f"{where}.access_key_id: must be {problem}")
    if problem := secret_problem(secret):
        raise ConfigError(f"{where}.secret_access_key: must be {problem}")
    return Credential(access_key_id, secret)


def _server(table: _Table) -> ServerConfig:
    default = ServerConfig
    config = ServerConfig(
        host=table.get("host", str, default.host),
        port=table.ranged("port", default.port, 0, 65535),
        max_body_bytes=table.ranged(
            "max_body_bytes", default.max_body_bytes, MIN_BODY_BYTES, MAX_BODY_BYTES
        ),
        workers=table.ranged("workers", default.workers, 1, 256),
        pid_file=table.get("pid_file", str, default.pid_file),
        ping_host=table.get("ping_host", str, default.ping_host),
        ping_port=table.optional_port("ping_port"),
        drain_seconds=table.seconds("drain_seconds", default.drain_seconds, 0, 600),
        shutdown_delay_seconds=table.seconds(
            "shutdown_delay_seconds", default.shutdown_delay_seconds, 0, 600
        ),
        request_deadline_ms=table.ranged(
            "request_deadline_ms", default.request_deadline_ms, 1, 60_000
        ),
        max_concurrent_requests=table.ranged(
            "max_concurrent_requests", default.max_concurrent_requests, 1, 1_000_000
        ),
        header_timeout_seconds=table.seconds(
            "header_timeout_seconds", default.header_timeout_seconds, 0.1, 600
        ),
        body_timeout_seconds=table.seconds(
            "body_timeout_seconds", default.body_timeout_seconds, 0.1, 600
        ),
        idle_timeout_seconds=table.seconds(
            "idle_timeout_seconds", default.idle_timeout_seconds, 1, 86_400
        ),
    )
    table.done()
    return config


def _existing_file(table: _Table, key: str, base_dir: Path) -> Path:
    path = base_dir / table.require(key)
    if not path.is_file():
        raise ConfigError(f"{table.where(key)}: {path} is not a readable file")
    return path


def _tls(
    table: _Table, base_dir: Path, environ: Mapping[str, str], regions: list[str]
) -> TlsConfig:
    password_where = table.where("private_key_password")
    password = table.get("private_key_password", str, "")
    client_auth = None
    if "client_auth" in table.data:
        mtls = _Table(table.get("client_auth", dict, {}), table.where("client_auth"))
        default_names = sorted({f"cks.kms.{region}.amazonaws.com" for region in regions})
        names = mtls.get("allowed_common_names", list, default_names)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f"{mtls.where('allowed_common_names')}: a non-empty list of names")
        client_auth = MutualTlsConfig(
            ca_bundle=_existing_file(mtls, "ca_bundle", base_dir),
            allowed_common_names=tuple(names),
        )
        mtls.done()
    config = TlsConfig(
        certificate=_existing_file(table, "certificate", base_dir),
        private_key=_existing_file(table, "private_key", base_dir),
        private_key_password=(
            resolve_secret(password, password_where, base_dir, environ) if password else None
        ),
        expiry_warning_days=table.ranged("expiry_warning_days", 30, 0, 3650),
        client_auth=client_auth,
    )
    table.done()
    return config


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def _admin(table: _Table, base_dir: Path, environ: Mapping[str, str]) -> AdminConfig:
    from xks_proxy.admin.settings import parse_admin_auth  # it builds on this module's _Table

    enabled = table.get("enabled", bool, AdminConfig.enabled)
    host = table.get("host", str, AdminConfig.host)
    port = table.ranged("port", AdminConfig.port, 0, 65535)
    tls_table = table.get("tls", dict, None)
    tls = _tls(_Table(tls_table, table.where("tls")), base_dir, environ, []) if tls_table else None
    auth_table = table.get("auth", dict, None)
    auth = (
        parse_admin_auth(auth_table, table.where("auth"), base_dir)
        if auth_table is not None
        else None
    )
    table.done()
    if enabled and auth is None:
        raise ConfigError(f"{table.where('auth')}: required when the admin API is enabled")
    if enabled and tls is None and host not in LOOPBACK_HOSTS:
        raise ConfigError(
            f"{table.where('host')}: {host} is not loopback, so [admin.tls] is required "
            "(bearer tokens never cross a network in clear)"
        )
    return AdminConfig(enabled=enabled, host=host, port=port, tls=tls, auth=auth)


def _metrics(table: _Table) -> MetricsConfig:
    config = MetricsConfig(
        enabled=table.get("enabled", bool, MetricsConfig.enabled),
        host=table.get("host", str, MetricsConfig.host),
        port=table.ranged("port", MetricsConfig.port, 0, 65535),
    )
    table.done()
    return config


def _audit(table: _Table, base_dir: Path) -> AuditConfig:
    path = table.get("path", str, AuditConfig.path)
    on_failure = table.get("on_failure", str, AuditConfig.on_failure)
    if on_failure not in AUDIT_ON_FAILURE:
        raise ConfigError(
            f"{table.where('on_failure')}: must be one of {', '.join(AUDIT_ON_FAILURE)}"
        )
    config = AuditConfig(
        enabled=table.get("enabled", bool, AuditConfig.enabled),
        path=path if path == "-" else str(base_dir / path),
        on_failure=on_failure,
    )
    table.done()
    return config


def _health(table: _Table) -> HealthConfig:
    interval = table.get("interval_seconds", float, HealthConfig.interval_seconds)
    if not 1 <= interval <= MAX_HEALTH_INTERVAL:
        raise ConfigError(
            f"{table.where('interval_seconds')}: must be between 1 and {MAX_HEALTH_INTERVAL}"
        )
    ekm_vendor = table.get("ekm_vendor", str, "")
    config = HealthConfig(
        interval_seconds=interval,
        fleet_size=table.ranged("fleet_size", 1, 1, 10_000),
        proxy_vendor=table.get("proxy_vendor", str, HealthConfig.proxy_vendor),
        proxy_model=table.get("proxy_model", str, HealthConfig.proxy_model),
        ekm_vendor=ekm_vendor or None,
        ping_fails_when_ekms_unavailable=table.get(
            "ping_fails_when_ekms_unavailable", bool, HealthConfig.ping_fails_when_ekms_unavailable
        ),
    )
    table.done()
    return config


def _backend(name: str, table: _Table, base_dir: Path, environ: Mapping[str, str]) -> BackendConfig:
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"{table.path}: backend names are 1-64 characters of A-Z a-z 0-9 . _ -")
    kind = table.require("type")
    if kind == "pkcs11":
        return _pkcs11_backend(name, table, base_dir, environ)
    if kind != "software":
        raise ConfigError(f"{table.where('type')}: unknown backend type {kind!r}")
    from xks_proxy.kek_config import parse_kek_setting  # it builds on this module's helpers

    kek = parse_kek_setting(table.require("kek"), table.where("kek"), base_dir, environ)
    path, database_url = _software_store(table, base_dir, environ)
    config = SoftwareBackendConfig(
        name=name,
        path=path,
        kek=kek,
        database_url=database_url,
        key_cache_size=table.ranged("key_cache_size", 10_000, 16, 10_000_000),
        fault_delay_ms=table.ranged("fault_delay_ms", 0, 0, 60_000),
    )
    table.done()
    return config


def _software_store(
    table: _Table, base_dir: Path, environ: Mapping[str, str]
) -> tuple[Path | None, str | None]:
    """``path`` (an SQLite file) or ``database_url`` (PostgreSQL, secret reference allowed)."""
    if ("path" in table.data) == ("database_url" in table.data):
        raise ConfigError(f"{table.path}: give exactly one of path or database_url")
    if "path" in table.data:
        return base_dir / table.require("path"), None
    where = table.where("database_url")
    url = resolve_secret(table.require("database_url"), where, base_dir, environ)
    if not url.startswith(("postgresql://", "postgres://")):
        # Never echo the value: it may carry a password.
        raise ConfigError(f"{where}: must be a postgresql:// URL")
    return None, url


def _token_selectors(table: _Table) -> tuple[TokenSelector, ...]:
    raw = table.get("tokens", list, [])
    if not raw:
        raise ConfigError(f"{table.where('tokens')}: at least one token ({{label = ...}})")
    selectors = []
    for index, item in enumerate(raw):
        entry = _Table(item, f"{table.where('tokens')}[{index}]")
        label = entry.get("label", str, "")
        serial = entry.get("serial", str, "")
        if bool(label) == bool(serial):
            raise ConfigError(f"{entry.path}: give exactly one of label or serial")
        selectors.append(TokenSelector(label=label or None, serial=serial or None))
        entry.done()
    return tuple(selectors)


def _pkcs11_backend(
    name: str, table: _Table, base_dir: Path, environ: Mapping[str, str]
) -> Pkcs11BackendConfig:
    module = base_dir / table.require("module")
    if not module.is_file():
        raise ConfigError(f"{table.where('module')}: {module} is not a file")
    pin_where = table.where("user_pin")
    key_lookup = table.get("key_lookup", str, "label")
    if key_lookup not in ("label", "id"):
        raise ConfigError(f"{table.where('key_lookup')}: must be label or id")
    iv_source = table.get("iv_source", str, "proxy")
    if iv_source not in ("proxy", "token"):
        raise ConfigError(f"{table.where('iv_source')}: must be proxy or token")
    config = Pkcs11BackendConfig(
        name=name,
        module=module,
        tokens=_token_selectors(table),
        user_pin=resolve_secret(table.require("user_pin"), pin_where, base_dir, environ),
        key_lookup=key_lookup,
        health_key_label=table.get("health_key_label", str, "xks-proxy-health"),
        sessions=table.ranged("sessions", 8, 1, 1024),
        session_wait_ms=table.ranged("session_wait_ms", 100, 1, 60_000),
        iv_source=iv_source,
        vendor=table.get("vendor", str, "") or None,
        model=table.get("model", str, "") or None,
        fault_delay_ms=table.ranged("fault_delay_ms", 0, 0, 60_000),
        calls_on_event_loop=table.get("calls_on_event_loop", bool, False),
    )
    table.done()
    return config


def _inline_credentials(
    table: _Table, base_dir: Path, environ: Mapping[str, str]
) -> list[Credential]:
    raw = table.get("credentials", list, [])
    credentials = []
    for index, item in enumerate(raw):
        entry = _Table(item, f"{table.where('credentials')}[{index}]")
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


def _key_store(
    table: _Table,
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


def _credentials_backend(table: _Table, backend: str, backends: Collection[str]) -> str | None:
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


def _check_unique(stores: list[KeyStoreConfig]) -> None:
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


def _check_credential_backends(
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


def parse_config(
    document: dict[str, Any],
    path: Path,
    environ: Mapping[str, str] | None = None,
    *,
    with_backends: bool | Collection[str] = True,
) -> Config:
    """Build a validated ``Config`` from a parsed TOML document (see the module docstring for
    ``with_backends``; a collection of names parses those backends only)."""
    env = os.environ if environ is None else environ
    base_dir = path.parent
    top = _Table(document, "")
    credentials_name = top.get("credentials_file", str, "")
    credentials_file = base_dir / credentials_name if credentials_name else None
    backends_table = _Table(top.get("backends", dict, {}), "backends")
    backend_names = list(backends_table.data)
    if not backend_names:
        raise ConfigError("backends: at least one backend is required")
    backends = {
        name: _backend(
            name, _Table(backends_table.get(name, dict, {}), f"backends.{name}"), base_dir, env
        )
        for name in backend_names
        if with_backends is True or (with_backends is not False and name in with_backends)
    }
    extra = read_credentials_file(credentials_file) if credentials_file else {}
    raw_stores = top.get("key_stores", list, [])
    if not raw_stores:
        raise ConfigError("key_stores: at least one key store is required")
    stores = [
        _key_store(_Table(item, f"key_stores[{index}]"), backend_names, extra, base_dir, env)
        for index, item in enumerate(raw_stores)
    ]
    _check_unique(stores)
    unknown_stores = sorted(set(extra) - {store.name for store in stores})
    if unknown_stores:
        raise ConfigError(f"credentials_file: names unknown key store {unknown_stores[0]!r}")
    _check_credential_backends(stores, backends)
    tls_table = top.get("tls", dict, None)
    tls = (
        _tls(_Table(tls_table, "tls"), base_dir, env, [s.region for s in stores])
        if tls_table is not None
        else None
    )
    config = Config(
        path=path,
        tls=tls,
        server=_server(_Table(top.get("server", dict, {}), "server")),
        metrics=_metrics(_Table(top.get("metrics", dict, {}), "metrics")),
        audit=_audit(_Table(top.get("audit", dict, {}), "audit"), base_dir),
        health=_health(_Table(top.get("health", dict, {}), "health")),
        backends=backends,
        key_stores=tuple(stores),
        credentials_file=credentials_file,
        admin=_admin(_Table(top.get("admin", dict, {}), "admin"), base_dir, env),
    )
    top.done()
    return config


def load_config(
    path: Path,
    environ: Mapping[str, str] | None = None,
    *,
    with_backends: bool | Collection[str] = True,
) -> Config:
    """Read and validate a configuration file."""
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    return parse_config(document, path.resolve(), environ, with_backends=with_backends)
