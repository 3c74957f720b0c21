"""Configuration: the example file loads, secrets resolve, and each mistake names its key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from xks_proxy.authz.load import load_authorizers
from xks_proxy.config import (
    Pkcs11BackendConfig,
    SoftwareBackendConfig,
    load_config,
    parse_config,
)
from xks_proxy.devcert import self_signed
from xks_proxy.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "xks-proxy.example.toml"
SECRET = "FYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE"
KEK = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


def test_example_configuration_loads(tmp_path: Path) -> None:
    example = tmp_path / "xks-proxy.toml"
    example.write_text(EXAMPLE.read_text())
    policy = EXAMPLE.parent / "authorization.example.cedar"
    (tmp_path / policy.name).write_text(policy.read_text())
    (tmp_path / "kek.key").write_text(KEK + "\n")
    certificate, key = self_signed()
    (tmp_path / "tls").mkdir()
    for name, content in (
        ("server.pem", certificate),
        ("server.key", key),
        ("amazon-trust-services.pem", certificate),
    ):
        (tmp_path / "tls" / name).write_bytes(content)
    config = load_config(example, {"XKS_PAYMENTS_SECRET": SECRET})
    assert config.tls is not None and config.tls.client_auth is not None
    assert config.tls.client_auth.allowed_common_names == (
        "cks.kms.eu-west-1.amazonaws.com",
        "cks.kms.us-east-1.amazonaws.com",
    )
    assert config.server.drain_seconds == 10 and config.server.request_deadline_ms == 200
    payments, analytics = config.key_stores
    assert (payments.requests_per_second, payments.burst) == (1800, 1800)
    assert analytics.requests_per_second is None
    assert payments.uri_path == "/keystores/payments/kms/xks/v1"
    assert payments.credentials[0].secret_access_key == SECRET
    assert analytics.region == "eu-west-1" and analytics.credentials == ()
    local = config.backends["local"]
    assert isinstance(local, SoftwareBackendConfig) and local.kek == bytes(range(32))
    assert config.audit.path == str(tmp_path / "audit.log")
    assert SECRET not in repr(config) and KEK not in repr(config)
    assert payments.authorization_policy == tmp_path / "authorization.example.cedar"
    authorizers = load_authorizers(config)
    assert authorizers["analytics"] is None
    payments_authorizer = authorizers["payments"]
    assert payments_authorizer is not None and payments_authorizer.policies is not None
    assert [p.name for p in payments_authorizer.policies.policies.values()] == [
        "allow-the-rest",
        "payments-ebs-only-through-ebs",
        "decrypt-only-from-vpce",
        "ingest-may-not-decrypt",
    ]


def test_softhsm_example_configuration_loads(tmp_path: Path) -> None:
    from tests.softhsm import find_module

    text = (EXAMPLE.parent / "xks-proxy.softhsm2.example.toml").read_text()
    example = tmp_path / "xks-proxy.toml"
    example.write_text(text.replace("/usr/lib/softhsm/libsofthsm2.so", str(find_module())))
    config = load_config(example, {"XKS_HSM_PIN": "1234"})
    hsm = config.backends["hsm"]
    assert isinstance(hsm, Pkcs11BackendConfig)
    assert hsm.tokens[0].label == "xks" and hsm.user_pin == "1234"
    assert "1234" not in repr(config)


def _pkcs11(**settings: Any) -> Pkcs11BackendConfig:
    """A minimal configuration whose backend is PKCS#11 (the module only has to be a file)."""
    document = _minimal()
    document["backends"]["local"] = {"type": "pkcs11", "module": str(EXAMPLE), "user_pin": "1",
                                     "tokens": [{"label": "a"}], **settings}  # fmt: skip
    backend = _parse(document).backends["local"]
    assert isinstance(backend, Pkcs11BackendConfig)
    return backend


def test_calls_on_event_loop_is_auto_unless_set() -> None:
    default = _pkcs11()
    assert (default.calls_on_event_loop, default.event_loop_call_limit_ms) == ("auto", 10.0)
    assert _pkcs11(calls_on_event_loop=True).calls_on_event_loop is True
    assert _pkcs11(calls_on_event_loop=False).calls_on_event_loop is False
    assert _pkcs11(calls_on_event_loop="auto").calls_on_event_loop == "auto"
    # Milliseconds as a float or an int: a SoftHSM2 call takes about a tenth of one.
    assert _pkcs11(event_loop_call_limit_ms=0.001).event_loop_call_limit_ms == 0.001
    limit = _pkcs11(event_loop_call_limit_ms=5).event_loop_call_limit_ms
    assert (limit, type(limit)) == (5.0, float)


@pytest.mark.parametrize("value", ["yes", "Auto", "true", 1, 0, [True]])
def test_calls_on_event_loop_refuses_other_values(value: Any) -> None:
    with pytest.raises(ConfigError) as raised:
        _pkcs11(calls_on_event_loop=value)
    assert str(raised.value) == (
        'backends.local.calls_on_event_loop: must be true, false or "auto"'
    )


@pytest.mark.parametrize("value", [0, -1, 0.0, 60_001, "10", True])
def test_event_loop_call_limit_is_above_zero_and_at_most_a_minute(value: Any) -> None:
    with pytest.raises(ConfigError) as raised:
        _pkcs11(event_loop_call_limit_ms=value)
    assert str(raised.value).startswith("backends.local.event_loop_call_limit_ms: must be")


def _minimal() -> dict[str, Any]:
    return {
        "backends": {"local": {"type": "software", "path": "keys.db", "kek": KEK}},
        "key_stores": [
            {
                "name": "dev",
                "uri_path": "/keystores/dev/kms/xks/v1",
                "region": "us-east-1",
                "backend": "local",
                "credentials": [
                    {"access_key_id": "AKIAI2SFODNN7EXAMPLE", "secret_access_key": SECRET}
                ],
            }
        ],
    }


def _parse(document: dict[str, Any], environ: dict[str, str] | None = None) -> Any:
    return parse_config(document, Path("/nonexistent/xks-proxy.toml"), environ or {})


def test_minimal_configuration_and_defaults() -> None:
    config = _parse(_minimal())
    assert config.server.port == 8080 and config.server.host == "127.0.0.1"
    assert config.metrics.host == "127.0.0.1" and config.audit.path == "-"
    assert config.key_stores[0].key_patterns == ("*",)


def _set(path: str, value: Any) -> Any:
    def change(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = document
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[last] = value

    return change


BAD: list[tuple[str, Any, str]] = [
    ("unknown top-level key", _set("colour", "blue"), "colour: unknown key"),
    ("unknown server key", _set("server.prot", 1), "server.prot: unknown key"),
    ("port type", _set("server.port", "80"), "server.port: must be a int"),
    ("port range", _set("server.port", 70000), "server.port: must be between"),
    ("body cap too small", _set("server.max_body_bytes", 1024), "server.max_body_bytes"),
    (
        "health interval over a minute",
        _set("health.interval_seconds", 61),
        "health.interval_seconds",
    ),
    ("fleet size zero", _set("health.fleet_size", 0), "health.fleet_size"),
    ("metrics enabled type", _set("metrics.enabled", "yes"), "metrics.enabled: must be a bool"),
    ("backend type", _set("backends.local.type", "cloud"), "backends.local.type"),
    ("backend kek", _set("backends.local.kek", "c2hvcnQ="), "backends.local.kek"),
    ("backend kek env missing", _set("backends.local.kek", "env:NOPE"), "backends.local.kek"),
    ("backend kek file missing", _set("backends.local.kek", "file:nope.key"), "backends.local.kek"),
    ("backend unknown key", _set("backends.local.pin", "1"), "backends.local.pin: unknown key"),
    ("no key stores", _set("key_stores", []), "key_stores"),
    ("workers zero", _set("server.workers", 0), "server.workers"),
    ("ping port range", _set("server.ping_port", -1), "server.ping_port"),
    ("deadline type", _set("server.request_deadline_ms", 0.5), "server.request_deadline_ms"),
    ("drain negative", _set("server.drain_seconds", -1), "server.drain_seconds"),
    (
        "header timeout zero",
        _set("server.header_timeout_seconds", 0),
        "server.header_timeout_seconds",
    ),
    ("tls without files", _set("tls.certificate", "missing.pem"), "tls.certificate"),
    (
        "tls unknown key",
        _set("tls", {"certificate": str(EXAMPLE), "private_key": str(EXAMPLE), "ciphers": "ALL"}),
        "tls.ciphers: unknown key",
    ),
    (
        "quota negative",
        _set("key_stores.0.requests_per_second", -5),
        "key_stores[0].requests_per_second",
    ),
    ("burst zero", _set("key_stores.0.burst", 0), "key_stores[0].burst"),
    (
        "fault delay type",
        _set("backends.local.fault_delay_ms", "1"),
        "backends.local.fault_delay_ms",
    ),
    (
        "pkcs11 module missing",
        _set("backends.local", {"type": "pkcs11", "module": "/nope.so", "user_pin": "1"}),
        "backends.local.module",
    ),
    (
        "pkcs11 no tokens",
        _set("backends.local", {"type": "pkcs11", "module": str(EXAMPLE), "user_pin": "1"}),
        "backends.local.tokens",
    ),
    (
        "pkcs11 token label and serial",
        _set(
            "backends.local",
            {
                "type": "pkcs11",
                "module": str(EXAMPLE),
                "user_pin": "1",
                "tokens": [{"label": "a", "serial": "b"}],
            },
        ),
        "backends.local.tokens[0]",
    ),
    (
        "pkcs11 iv source",
        _set(
            "backends.local",
            {
                "type": "pkcs11",
                "module": str(EXAMPLE),
                "user_pin": "1",
                "tokens": [{"label": "a"}],
                "iv_source": "hsm",
            },
        ),
        "backends.local.iv_source",
    ),
    (
        "pkcs11 pin missing",
        _set(
            "backends.local", {"type": "pkcs11", "module": str(EXAMPLE), "tokens": [{"label": "a"}]}
        ),
        "backends.local.user_pin",
    ),
    (
        "disabled keys",
        _set("key_stores.0.disabled_keys", ["bad key"]),
        "key_stores[0].disabled_keys",
    ),
    (
        "uri path without suffix",
        _set("key_stores.0.uri_path", "/keystores/dev"),
        "key_stores[0].uri_path",
    ),
    (
        "uri path bad chars",
        _set("key_stores.0.uri_path", "/key stores/kms/xks/v1"),
        "key_stores[0].uri_path",
    ),
    (
        "uri path too long",
        _set("key_stores.0.uri_path", "/" + "a" * 120 + "/kms/xks/v1"),
        "key_stores[0].uri_path",
    ),
    ("region", _set("key_stores.0.region", "Mars"), "key_stores[0].region"),
    ("backend reference", _set("key_stores.0.backend", "hsm"), "key_stores[0].backend"),
    ("key patterns", _set("key_stores.0.keys", ["bad key"]), "key_stores[0].keys"),
    ("no name", lambda d: d["key_stores"][0].pop("name"), "key_stores[0].name: is required"),
    (
        "access key id lowercase",
        _set("key_stores.0.credentials.0.access_key_id", "akiai2sfodnn7example"),
        "key_stores[0].credentials[0].access_key_id",
    ),
    (
        "access key id short",
        _set("key_stores.0.credentials.0.access_key_id", "AKIA"),
        "key_stores[0].credentials[0].access_key_id",
    ),
    (
        "secret short",
        _set("key_stores.0.credentials.0.secret_access_key", "short"),
        "key_stores[0].credentials[0].secret_access_key",
    ),
    (
        "secret env missing",
        _set("key_stores.0.credentials.0.secret_access_key", "env:NOPE"),
        "key_stores[0].credentials[0].secret_access_key",
    ),
    (
        "credential unknown key",
        _set("key_stores.0.credentials.0.role", "admin"),
        "key_stores[0].credentials[0].role: unknown key",
    ),
    (
        "duplicate key store path",
        lambda d: d["key_stores"].append({**d["key_stores"][0], "name": "two", "credentials": []}),
        "key_stores[1].uri_path",
    ),
    (
        "duplicate access key id",
        lambda d: d["key_stores"].append(
            {**d["key_stores"][0], "name": "two", "uri_path": "/two/kms/xks/v1"}
        ),
        "key_stores[1].credentials",
    ),
]


# Issue 9 finding 8: what a path-normalising client (botocore) could never reach is refused, and
# the message names the value and why.
UNREACHABLE_URI_PATHS = [
    "/keystores//dev/kms/xks/v1",
    "//kms/xks/v1",
    "/keystores/dev//kms/xks/v1",
    "/keystores/./kms/xks/v1",
    "/keystores/../kms/xks/v1",
    "/./kms/xks/v1",
]
for _path in UNREACHABLE_URI_PATHS:
    BAD.append(
        (
            f"unreachable uri_path {_path}",
            _set("key_stores.0.uri_path", _path),
            f"key_stores[0].uri_path: {_path!r} could never be reached",
        )
    )
for _key_id in (".", ".."):
    BAD += [
        (
            f"unreachable key id {_key_id} in keys",
            _set("key_stores.0.keys", ["key-*", _key_id]),
            f"key_stores[0].keys: key id {_key_id!r} could never be reached",
        ),
        (
            f"unreachable key id {_key_id} in disabled_keys",
            _set("key_stores.0.disabled_keys", [_key_id]),
            f"key_stores[0].disabled_keys: key id {_key_id!r} could never be reached",
        ),
    ]


def test_dotted_key_ids_and_patterns_stay_valid() -> None:
    # Only the whole segments "." and ".." are unreachable; dots inside a key id are fine.
    document = _minimal()
    document["key_stores"][0]["keys"] = ["...", "a.b", ".*", "..x"]
    document["key_stores"][0]["disabled_keys"] = ["a..b"]
    assert _parse(document).key_stores[0].key_patterns == ("...", "a.b", ".*", "..x")


@pytest.mark.parametrize(("name", "change", "where"), BAD, ids=[b[0] for b in BAD])
def test_mistakes_name_the_bad_key(name: str, change: Any, where: str) -> None:
    document = _minimal()
    change(document)
    with pytest.raises(ConfigError) as raised:
        _parse(document)
    assert where in str(raised.value)
    assert SECRET not in str(raised.value)


def test_secret_references(tmp_path: Path) -> None:
    document = _minimal()
    (tmp_path / "secret.txt").write_text(SECRET + "\n")
    document["key_stores"][0]["credentials"][0]["secret_access_key"] = "file:secret.txt"
    document["backends"]["local"]["kek"] = "env:KEK"
    config = parse_config(document, tmp_path / "xks-proxy.toml", {"KEK": KEK})
    assert config.key_stores[0].credentials[0].secret_access_key == SECRET


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\nport = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    assert tomllib  # the parser the proxy uses
