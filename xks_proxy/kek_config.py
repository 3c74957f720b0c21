"""The ``kek`` setting of a software backend: a 32-byte secret, or an AES key inside an HSM.

``kek = "file:kek.key"`` or ``"env:NAME"`` (or inline) is the Base64 encoding of 32 bytes, as
``init`` writes it. ``kek = "pkcs11:…"`` names an AES key in a PKCS#11 token with a PKCS#11 URI
(RFC 7512)::

    pkcs11:token=xks-kek;object=kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:XKS_KEK_PIN

Path attributes (``;``-separated): ``token`` (the token label) or ``serial`` (its serial
number), and ``object`` (the key's CKA_LABEL); ``type=secret-key`` may be given. Query
attributes (``&``-separated): ``module-path`` (the PKCS#11 module; relative to the configuration
file) and ``pin-source``, a secret reference to the user PIN (``env:NAME`` or ``file:PATH``,
as everywhere in the configuration). RFC 7512's ``pin-value`` is refused: the URI is shown in
logs and command output (``keys rewrap`` prints it), so a PIN never sits in it; for the same
reason ``module-name`` (a platform-dependent lookup) is refused in favour of an explicit path.
Values are percent-decoded (RFC 7512 §2.3).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from xks_proxy.config_backends import TokenSelector
from xks_proxy.config_table import parse_kek, resolve_secret
from xks_proxy.errors import ConfigError

SCHEME = "pkcs11:"
_PATH_ATTRIBUTES = frozenset({"token", "serial", "object", "type"})
_QUERY_ATTRIBUTES = frozenset({"module-path", "pin-source"})


@dataclass(frozen=True, slots=True)
class Pkcs11Kek:
    """An AES key in a PKCS#11 token that wraps and unwraps the store's key versions."""

    # The URI as written (it holds a reference to the PIN, never the PIN): names the KEK in
    # logs and errors.
    uri: str
    module: Path
    token: TokenSelector
    label: str
    pin: str = field(repr=False)

    def __str__(self) -> str:
        return f"pkcs11 KEK {self.label!r} on token {self.token}"


# What a software backend's ``kek`` resolves to.
Kek = bytes | Pkcs11Kek


def parse_kek_setting(value: str, where: str, base_dir: Path, environ: Mapping[str, str]) -> Kek:
    """``kek`` as configured: a ``pkcs11:`` URI, or a (reference to a) Base64 32-byte key."""
    if value.startswith(SCHEME):
        return parse_pkcs11_kek(value, where, base_dir, environ)
    return parse_kek(resolve_secret(value, where, base_dir, environ), where)


def _attributes(text: str, separator: str, known: frozenset[str], where: str) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for item in filter(None, text.split(separator)):
        name, equals, raw = item.partition("=")
        if name == "pin-value":
            raise ConfigError(
                f"{where}: pin-value is refused (the URI is shown in logs); "
                "give pin-source=env:NAME or pin-source=file:PATH"
            )
        if not equals or name not in known:
            raise ConfigError(
                f"{where}: unknown PKCS#11 URI attribute {name!r} "
                f"(known: {', '.join(sorted(known))})"
            )
        if name in attributes:
            raise ConfigError(f"{where}: PKCS#11 URI attribute {name} given twice")
        attributes[name] = unquote(raw)
    return attributes


def parse_pkcs11_kek(uri: str, where: str, base_dir: Path, environ: Mapping[str, str]) -> Pkcs11Kek:
    path_part, _, query_part = uri.removeprefix(SCHEME).partition("?")
    path = _attributes(path_part, ";", _PATH_ATTRIBUTES, where)
    query = _attributes(query_part, "&", _QUERY_ATTRIBUTES, where)
    if path.get("type", "secret-key") != "secret-key":
        raise ConfigError(f"{where}: a KEK is a secret key (type=secret-key)")
    if ("token" in path) == ("serial" in path):
        raise ConfigError(f"{where}: give exactly one of token=LABEL or serial=NUMBER")
    label = path.get("object", "")
    if not label:
        raise ConfigError(f"{where}: object=LABEL (the AES key's label) is required")
    if "module-path" not in query:
        raise ConfigError(f"{where}: module-path=/path/to/the/pkcs11/module.so is required")
    module = base_dir / query["module-path"]
    if not module.is_file():
        raise ConfigError(f"{where}: module-path {module} is not a file")
    pin_source = query.get("pin-source")
    if pin_source is None or not pin_source.startswith(("env:", "file:")):
        raise ConfigError(f"{where}: pin-source=env:NAME or pin-source=file:PATH is required")
    pin = resolve_secret(pin_source, f"{where} pin-source", base_dir, environ)
    token = TokenSelector(label=path.get("token"), serial=path.get("serial"))
    return Pkcs11Kek(uri=uri, module=module, token=token, label=label, pin=pin)
