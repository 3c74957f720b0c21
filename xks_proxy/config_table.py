"""How the configuration is read: a TOML table key by key (``Table``: every error names the TOML
path of the bad key, and ``done()`` refuses the keys nobody asked for), and the secrets its values
may give inline or by reference (``env:NAME``, ``file:PATH``; see ``config.py``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from xks_proxy.errors import ConfigError
from xks_proxy.sigv4 import Credential
from xks_proxy.validation import access_key_id_problem, secret_problem

KEK_BYTES = 32

T = TypeVar("T")


class Table:
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
