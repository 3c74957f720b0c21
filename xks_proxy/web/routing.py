"""Map a request path to (key store, XKS operation, key id), per xks-spec §2.

Paths are matched as received (undecoded). The key store is found by its full URI path, so an
unknown prefix is a 404 InvalidUriPathException before any authentication (§7.4): the prefix
decides which credentials apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from xks_proxy.errors import InvalidUriPathError
from xks_proxy.service import KeyStore

GET_KEY_METADATA = "GetKeyMetadata"
ENCRYPT = "Encrypt"
DECRYPT = "Decrypt"
GET_HEALTH_STATUS = "GetHealthStatus"
_KEY_OPERATIONS = {"metadata": GET_KEY_METADATA, "encrypt": ENCRYPT, "decrypt": DECRYPT}


class Route(NamedTuple):
    key_store: KeyStore
    operation: str
    # As it appeared in the path; validated later, after authentication.
    raw_key_id: str | None


def resolve(key_stores: Mapping[str, KeyStore], path: str) -> Route:
    """Raises InvalidUriPathError for anything but the four API paths of a configured store."""
    base, _, last = path.rpartition("/")
    if last == "health" and base in key_stores:
        return Route(key_stores[base], GET_HEALTH_STATUS, None)
    parts = path.rsplit("/", 3)
    if len(parts) == 4:
        base, keys, key_id, action = parts
        if keys == "keys" and action in _KEY_OPERATIONS and base in key_stores:
            return Route(key_stores[base], _KEY_OPERATIONS[action], key_id)
    raise InvalidUriPathError()
