"""Finding HSM key objects from a pooled session: handles, versions, descriptions.

* Handles are cached per session and per (key id, version), and looked up again when the token
  calls them stale.
* The newest version of each key (``pkcs11_versions``) is remembered for
  ``VERSION_RESCAN_SECONDS``; the first Encrypt after that probes the token for the next version
  (one lookup), so a rotation made by any process (the CLI, the admin API, another proxy on the
  same token) is encrypted under by every proxy within that bound. Decrypt never waits for it:
  it looks up the version its ciphertextMetadata names, and a newer version found that way is
  remembered at once.
* Descriptions (GetKeyMetadata) read version 1, the object that is the key's identity: keySpec
  from CKA_KEY_TYPE and CKA_VALUE_LEN (AES_256 only for a 32-byte AES key; RSA keys report
  RSA_<bits>), keyUsage from CKA_ENCRYPT, CKA_DECRYPT, CKA_WRAP, CKA_UNWRAP, CKA_SIGN,
  CKA_VERIFY and CKA_DERIVE, keyStatus DISABLED outside the key's CKA_START_DATE..CKA_END_DATE
  where the token can report them (SoftHSM 2.6.1 cannot read them back).
* ``confirm_token`` is the rule that a lost token is never a missing key (issue 9, finding 3).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, TypeVar

from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11 import exceptions as p11

from xks_proxy.backends.base import DECRYPT, ENCRYPT, KeyInfo
from xks_proxy.backends.pkcs11_errors import STALE_HANDLE, TokenLostError
from xks_proxy.backends.pkcs11_versions import (
    FIRST_VERSION,
    find_version,
    lookup,
    newest_version,
)

T = TypeVar("T")
# How long a proxy may go on encrypting under a version after a newer one was made.
VERSION_RESCAN_SECONDS = 1.0
# The cache name of the backend's health key: never a valid key id, so never a customer key.
HEALTH_KEY = "\x00health"
_USAGE_ATTRIBUTES = (
    (Attribute.ENCRYPT, ENCRYPT),
    (Attribute.DECRYPT, DECRYPT),
    (Attribute.WRAP, "WRAP"),
    (Attribute.UNWRAP, "UNWRAP"),
    (Attribute.SIGN, "SIGN"),
    (Attribute.VERIFY, "VERIFY"),
    (Attribute.DERIVE, "DERIVE"),
)


@dataclass(eq=False)
class PooledSession:
    """One pooled session and the key objects resolved in it."""

    session: Any = None
    keys: dict[tuple[str, int], Any] = field(default_factory=dict)

    def discard(self) -> None:
        if self.session is not None:
            with contextlib.suppress(Exception):  # the session is already broken
                self.session.close()
        self.session = None
        self.keys.clear()


def _flag(key: Any, attribute: Attribute) -> bool:
    try:
        return bool(key[attribute])
    except (p11.PKCS11Error, KeyError):
        return False


def _optional(key: Any, attribute: Attribute) -> Any:
    try:
        return key[attribute]
    except (p11.PKCS11Error, KeyError, ValueError):
        # ValueError: python-pkcs11 cannot parse an empty CKA_START_DATE / CKA_END_DATE.
        return None


def _within_dates(key: Any, today: date) -> bool:
    start, end = _optional(key, Attribute.START_DATE), _optional(key, Attribute.END_DATE)
    return not (isinstance(start, date) and today < start) and not (
        isinstance(end, date) and today > end
    )


class KeyFinder:
    """Key objects by key id and version, for the sessions of one backend (any thread)."""

    def __init__(self, key_lookup: str, health_key_label: str) -> None:
        self._key_lookup = key_lookup
        self._health_key_label = health_key_label
        # key id -> (newest version seen, when to look for a newer one: time.monotonic())
        self._newest: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def _find(self, pooled: PooledSession, key_id: str, version: int) -> Any:
        if key_id == HEALTH_KEY:
            return pooled.session.get_key(
                object_class=ObjectClass.SECRET_KEY, label=self._health_key_label
            )
        return find_version(pooled.session, key_id, version, self._key_lookup)

    def key(
        self, pooled: PooledSession, key_id: str, version: int = FIRST_VERSION, fresh: bool = False
    ) -> Any:
        """The object of ``version``; raises ``p11.NoSuchKey`` when the token has none."""
        key = None if fresh else pooled.keys.get((key_id, version))
        if key is None:
            key = self._find(pooled, key_id, version)
            pooled.keys[key_id, version] = key
        return key

    def with_key(
        self, pooled: PooledSession, key_id: str, version: int, use: Callable[[Any], T]
    ) -> T:
        try:
            return use(self.key(pooled, key_id, version))
        except STALE_HANDLE:
            return use(self.key(pooled, key_id, version, fresh=True))

    def newest(self, pooled: PooledSession, key_id: str) -> int:
        """The version Encrypt uses: the newest, looked for again every
        ``VERSION_RESCAN_SECONDS``."""
        if key_id == HEALTH_KEY:
            return FIRST_VERSION  # the health key is never rotated
        now = time.monotonic()
        known = self._newest.get(key_id)
        if known is not None and now < known[1]:
            return known[0]
        start = known[0] if known is not None else FIRST_VERSION
        version = newest_version(pooled.session, key_id, self._key_lookup, start)
        with self._lock:
            current = self._newest.get(key_id)
            version = max(version, current[0] if current is not None else version)
            self._newest[key_id] = (version, now + VERSION_RESCAN_SECONDS)
        return version

    def learn(self, key_id: str, version: int) -> None:
        """A Decrypt found ``version``: Encrypt uses it from now on if it is newer."""
        with self._lock:
            current = self._newest.get(key_id)
            if current is not None and version > current[0]:
                self._newest[key_id] = (version, current[1])

    def confirm_token(self, pooled: PooledSession) -> None:
        """Before an answer that blames the request (no such key, bad ciphertext: permanent
        for KMS), prove that the token still answers: the health key is on every token."""
        try:
            pooled.session.get_key(
                object_class=ObjectClass.SECRET_KEY, label=self._health_key_label
            )
        except p11.PKCS11Error:
            raise TokenLostError() from None

    def describe(self, pooled: PooledSession, key_id: str) -> KeyInfo:
        """GetKeyMetadata from version 1's attributes."""
        try:
            key = self.with_key(pooled, key_id, FIRST_VERSION, lambda k: k)
        except p11.NoSuchKey:
            # Not a secret key: an asymmetric key still gets an honest (non-AES) description.
            key = pooled.session.get_key(object_class=ObjectClass.PRIVATE_KEY,
                                         **lookup(key_id, self._key_lookup))  # fmt: skip
        key_type = _optional(key, Attribute.KEY_TYPE)
        if key_type == KeyType.AES:
            key_spec = f"AES_{(_optional(key, Attribute.VALUE_LEN) or 0) * 8}"
        elif key_type == KeyType.RSA:
            key_spec = f"RSA_{getattr(key, 'key_length', 0)}"
        elif key_type == KeyType.EC:
            key_spec = "ECC"
        else:
            key_spec = "UNSUPPORTED"
        usage = frozenset(name for attribute, name in _USAGE_ATTRIBUTES if _flag(key, attribute))
        return KeyInfo(key_id, key_spec, usage, _within_dates(key, date.today()))
