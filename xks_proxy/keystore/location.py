"""Where a key store lives: an SQLite file (``sqlite:PATH`` or a path) or a PostgreSQL URL."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@dataclass(frozen=True, slots=True)
class StoreLocation:
    kind: str
    # A file path, or a URL that may carry a password: never logged, see ``display``.
    target: str = field(repr=False)

    @classmethod
    def parse(cls, text: str | Path) -> StoreLocation:
        if isinstance(text, Path):
            return cls(SQLITE, str(text))
        if text.startswith(_POSTGRES_SCHEMES):
            return cls(POSTGRESQL, text)
        if text.startswith(f"{SQLITE}:"):
            return cls(SQLITE, text.removeprefix(f"{SQLITE}:"))
        raise ValueError(f"not a key store location (sqlite:PATH or postgresql://...): {text!r}")

    @property
    def display(self) -> str:
        """The location as logs and errors show it: a URL without its password or query."""
        if self.kind == SQLITE:
            return self.target
        parts = urlsplit(self.target)
        host = parts.hostname or "localhost"
        netloc = f"{parts.username}@{host}" if parts.username else host
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
