"""The proxy's own sections of the configuration: ``[server]``, ``[tls]``, ``[metrics]``,
``[audit]``, ``[health]`` and ``[admin]`` (the admin API's listener), as frozen dataclasses with
their defaults, and the parser of each.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from xks_proxy import __version__
from xks_proxy.config_table import Table, resolve_secret
from xks_proxy.errors import ConfigError

if TYPE_CHECKING:
    from xks_proxy.admin.settings import AdminAuthConfig

# Room for the spec's minimum sizes in one body: 5736 Base64 characters of plaintext, 10924 of
# AAD, two 2048-character ARNs and the JSON around them (xks-spec §1, §4.2).
MIN_BODY_BYTES = 32 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
# XKS spec §4.4: a cached deep-health result must not be older than one minute.
MAX_HEALTH_INTERVAL = 55


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


def parse_server(table: Table) -> ServerConfig:
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


def _existing_file(table: Table, key: str, base_dir: Path) -> Path:
    path = base_dir / table.require(key)
    if not path.is_file():
        raise ConfigError(f"{table.where(key)}: {path} is not a readable file")
    return path


def parse_tls(
    table: Table, base_dir: Path, environ: Mapping[str, str], regions: list[str]
) -> TlsConfig:
    password_where = table.where("private_key_password")
    password = table.get("private_key_password", str, "")
    client_auth = None
    if "client_auth" in table.data:
        mtls = Table(table.get("client_auth", dict, {}), table.where("client_auth"))
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


def parse_admin(table: Table, base_dir: Path, environ: Mapping[str, str]) -> AdminConfig:
    from xks_proxy.admin.settings import parse_admin_auth  # it builds on config_table.Table

    enabled = table.get("enabled", bool, AdminConfig.enabled)
    host = table.get("host", str, AdminConfig.host)
    port = table.ranged("port", AdminConfig.port, 0, 65535)
    tls_table = table.get("tls", dict, None)
    tls = (
        parse_tls(Table(tls_table, table.where("tls")), base_dir, environ, [])
        if tls_table
        else None
    )
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


def parse_metrics(table: Table) -> MetricsConfig:
    config = MetricsConfig(
        enabled=table.get("enabled", bool, MetricsConfig.enabled),
        host=table.get("host", str, MetricsConfig.host),
        port=table.ranged("port", MetricsConfig.port, 0, 65535),
    )
    table.done()
    return config


def parse_audit(table: Table, base_dir: Path) -> AuditConfig:
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


def parse_health(table: Table) -> HealthConfig:
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
