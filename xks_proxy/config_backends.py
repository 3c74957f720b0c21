"""The ``[backends.NAME]`` sections: a software backend (its key store and KEK) or a PKCS#11
backend (module, tokens, PIN and sessions), as frozen dataclasses, and their parser.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from xks_proxy.config_table import Table, resolve_secret
from xks_proxy.errors import ConfigError
from xks_proxy.validation import NAME_PATTERN

if TYPE_CHECKING:
    from xks_proxy.kek_config import Kek


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
    # true, false or "auto": whether the module's calls run on the event loop thread, skipping
    # the hop to a thread; "auto" only for SoftHSM2, and a call on the loop slower than
    # event_loop_call_limit_ms moves them to threads (backends/pkcs11_placement.py).
    calls_on_event_loop: bool | Literal["auto"] = "auto"
    event_loop_call_limit_ms: float = 10.0
    fault_delay_ms: int = 0


BackendConfig = SoftwareBackendConfig | Pkcs11BackendConfig


def parse_backend(
    name: str, table: Table, base_dir: Path, environ: Mapping[str, str]
) -> BackendConfig:
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"{table.path}: backend names are 1-64 characters of A-Z a-z 0-9 . _ -")
    kind = table.require("type")
    if kind == "pkcs11":
        return _pkcs11_backend(name, table, base_dir, environ)
    if kind != "software":
        raise ConfigError(f"{table.where('type')}: unknown backend type {kind!r}")
    from xks_proxy.kek_config import parse_kek_setting  # it builds on config_table

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
    table: Table, base_dir: Path, environ: Mapping[str, str]
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


def _token_selectors(table: Table) -> tuple[TokenSelector, ...]:
    raw = table.get("tokens", list, [])
    if not raw:
        raise ConfigError(f"{table.where('tokens')}: at least one token ({{label = ...}})")
    selectors = []
    for index, item in enumerate(raw):
        entry = Table(item, f"{table.where('tokens')}[{index}]")
        label = entry.get("label", str, "")
        serial = entry.get("serial", str, "")
        if bool(label) == bool(serial):
            raise ConfigError(f"{entry.path}: give exactly one of label or serial")
        selectors.append(TokenSelector(label=label or None, serial=serial or None))
        entry.done()
    return tuple(selectors)


def _pkcs11_backend(
    name: str, table: Table, base_dir: Path, environ: Mapping[str, str]
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
        calls_on_event_loop=_calls_on_event_loop(table),
        event_loop_call_limit_ms=_event_loop_call_limit_ms(table),
    )
    table.done()
    return config


def _calls_on_event_loop(table: Table) -> bool | Literal["auto"]:
    value = table.get("calls_on_event_loop", object, "auto")
    if isinstance(value, bool):
        return value
    if value == "auto":
        return "auto"
    raise ConfigError(f'{table.where("calls_on_event_loop")}: must be true, false or "auto"')


def _event_loop_call_limit_ms(table: Table) -> float:
    """Milliseconds, a float: a SoftHSM2 call takes about a tenth of one."""
    value = table.get("event_loop_call_limit_ms", float, 10.0)
    if not 0 < value <= 60_000:
        raise ConfigError(
            f"{table.where('event_loop_call_limit_ms')}: must be more than 0 and at most 60000"
        )
    return value
