"""Versions of an HSM key: how each one is named on the token, and how to find the newest.

Version 1 is the object named by the key id itself (what ``pkcs11 create-key`` makes, and what
every ciphertext made before keys had versions was sealed under); version n ≥ 2 is an object
named ``<key id>#<n>``. The name is the object's CKA_LABEL, or its CKA_ID (the name's UTF-8
bytes) for a backend with ``key_lookup = "id"``; ``pkcs11 create-key`` and ``keys rotate`` set
both. A key id never contains ``#`` (1-128 characters of A-Z a-z 0-9 . _ -), so no key id can be
mistaken for a version of another, and no request can name a version object directly.

Versions are made one after the other (``keys rotate`` makes n + 1 only once n exists), so the
newest is found by probing n + 1, n + 2, … until one is missing: one lookup per version, never a
scan of the token. Each ciphertext records its version in ``ciphertextMetadata``
(``xks_proxy.aad.CiphertextMetadata``, the layout the software backend writes too).
"""

from __future__ import annotations

from typing import Any

from pkcs11 import ObjectClass
from pkcs11 import exceptions as p11

FIRST_VERSION = 1
_SEPARATOR = "#"


def version_name(key_id: str, version: int) -> str:
    """The CKA_LABEL (and CKA_ID) of ``version`` of ``key_id``."""
    return key_id if version == FIRST_VERSION else f"{key_id}{_SEPARATOR}{version}"


def parse_version_name(name: str) -> tuple[str, int] | None:
    """``(key id, version)`` for a name made by ``version_name``; None for anything else."""
    key_id, separator, number = name.partition(_SEPARATOR)
    if not separator:
        return key_id, FIRST_VERSION
    if not number.isdecimal() or number.startswith("0") or int(number) <= FIRST_VERSION:
        return None
    return key_id, int(number)


def lookup(name: str, key_lookup: str) -> dict[str, Any]:
    """The ``get_key`` arguments that find the object called ``name``."""
    return {"id": name.encode()} if key_lookup == "id" else {"label": name}


def find_version(session: Any, key_id: str, version: int, key_lookup: str) -> Any:
    """The secret-key object of ``version``; raises ``p11.NoSuchKey`` when the token has none."""
    return session.get_key(
        object_class=ObjectClass.SECRET_KEY, **lookup(version_name(key_id, version), key_lookup)
    )


def newest_version(session: Any, key_id: str, key_lookup: str, known: int = FIRST_VERSION) -> int:
    """The newest version of ``key_id`` at or above ``known`` (which must exist)."""
    version = known
    while True:
        try:
            find_version(session, key_id, version + 1, key_lookup)
        except p11.NoSuchKey:
            return version
        version += 1
