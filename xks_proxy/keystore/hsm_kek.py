"""A KEK inside a PKCS#11 token: the HSM wraps and unwraps key versions (CKM_AES_KEY_WRAP_PAD).

The KEK is an AES key that never leaves the token (``xks-proxy pkcs11 create-kek`` makes it
non-extractable, sensitive, able to wrap and unwrap and nothing else). Sealing hands the
payload to the token as a session object (CKK_GENERIC_SECRET, CKA_TOKEN false) and asks the
token to wrap it; unsealing asks the token to unwrap a row into such a session object, reads its
value and destroys it. The store on disk or in PostgreSQL is therefore useless without the
token, while requests still run AES-GCM in this process: a version is unwrapped once, on first
use, into the bounded cache (``keystore.cache``), so the HSM sees one call per cache miss. A
serving proxy runs that unwrap in a thread (``remote``), never on the event loop: with a network
HSM it is a round trip, and requests for keys already unsealed go on meanwhile. Calls share one
session under a lock; concurrent misses on one version share one unwrap.

Payload format (see ``sealing`` for why): ``SHA-256(binding) || u32 length || plaintext ||
zero padding`` to a multiple of 8 bytes. The padding is ours, not only RFC 5649's: SoftHSM
2.6.1 wraps inputs whose length is not a multiple of 8 wrongly (its output then differs from
RFC 5649 and does not unwrap, checked against ``cryptography`` and OpenSSL), and at a multiple
of 8 every conforming token gives the same bytes as ``openssl enc -id-aes256-wrap-pad``.

Errors: at start (``HsmKeySealer(...)``) a missing module or token, a wrong PIN or a missing
key label is one ``ConfigError`` line naming the URI (never the PIN). While serving, a token
that fails (gone, logged out, broken session) is reconnected once per call, at most once a
second; if that fails the call raises ``KeyStoreUnavailableError`` and ``problem`` says why (the
backend's health turns DEGRADED and the request gets a retryable InternalException, never
KeyNotFound: the key exists, its KEK is out of reach).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11

from xks_proxy.backends import pkcs11_library
from xks_proxy.backends.pkcs11_errors import SESSION_FAILURES, STALE_HANDLE
from xks_proxy.errors import ConfigError
from xks_proxy.kek_config import Pkcs11Kek
from xks_proxy.keystore.records import KeyStoreUnavailableError, SealedVersion
from xks_proxy.keystore.sealing import CHECK_PLAINTEXT, KeySealer, check_value

T = TypeVar("T")
_DIGEST_BYTES = 32
_LENGTH_BYTES = 4
_BLOCK = 8
# A token that just failed is tried again after this long, not on every cache miss.
RECONNECT_INTERVAL_SECONDS = 1.0
_PIN_FAILURES = (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange, p11.PinLocked, p11.PinExpired)


class KekLostError(Exception):
    """An unwrap failed and the KEK no longer gives its own check value: the token, not the
    row, is at fault (SoftHSM with its token directory gone fails unwraps with
    CKR_GENERAL_ERROR, the code it uses for a row that does not authenticate)."""


# The session or token failed: reconnect, and report the HSM unavailable if that fails too.
_UNREACHABLE: tuple[type[Exception], ...] = (*SESSION_FAILURES, *STALE_HANDLE, KekLostError)
# What ``_call`` answers with a reconnect: the above, and a token or key no longer found.
_RECONNECT: tuple[type[Exception], ...] = (*_UNREACHABLE, ConfigError)
# A payload in the token: a secret object we can read back, gone with the session.
_PAYLOAD_TEMPLATE = {
    Attribute.TOKEN: False,
    Attribute.SENSITIVE: False,
    Attribute.EXTRACTABLE: True,
}


def frame(plaintext: bytes, binding: bytes) -> bytes:
    body = hashlib.sha256(binding).digest() + len(plaintext).to_bytes(_LENGTH_BYTES) + plaintext
    return body + bytes(-len(body) % _BLOCK)


def unframe(payload: bytes, binding: bytes) -> bytes | None:
    """The plaintext of an unwrapped payload, or None if it is bound to another name."""
    header = _DIGEST_BYTES + _LENGTH_BYTES
    if len(payload) < header or len(payload) % _BLOCK:
        return None
    if not hmac.compare_digest(payload[:_DIGEST_BYTES], hashlib.sha256(binding).digest()):
        return None
    end = header + int.from_bytes(payload[_DIGEST_BYTES:header])
    if not len(payload) - _BLOCK < end <= len(payload) or any(payload[end:]):
        return None
    return payload[header:end]


def open_session(kek: Pkcs11Kek, *, rw: bool = False) -> Any:
    """A logged-in session on the KEK's token; ``ConfigError`` naming what is wrong."""
    try:
        library = pkcs11_library.load(kek.module)
    except (OSError, RuntimeError, pkcs11.PKCS11Error, pkcs11_library.Pkcs11LibraryError) as error:
        raise ConfigError(f"{kek.uri}: cannot load PKCS#11 module {kek.module}: {error}") from None
    try:
        if kek.token.label is not None:
            token = library.get_token(token_label=kek.token.label)
        else:
            assert kek.token.serial is not None
            token = library.get_token(token_serial=kek.token.serial.encode())
    except p11.NoSuchToken:
        raise ConfigError(f"{kek}: no token with {kek.token} in {kek.module}") from None
    except p11.MultipleTokensReturned:
        raise ConfigError(f"{kek}: several tokens with {kek.token}; name it by serial") from None
    except pkcs11.PKCS11Error as error:
        # SoftHSM whose token directory went away: CKR_GENERAL_ERROR from C_GetTokenInfo.
        raise ConfigError(f"{kek}: token {kek.token} cannot be read ({_name(error)})") from None
    try:
        return token.open(rw=rw, user_pin=kek.pin)
    except p11.UserAlreadyLoggedIn:
        # This process is logged in already (a pkcs11 backend on the same token): login state
        # belongs to the application, so a session without a PIN shares it.
        return token.open(rw=rw)
    except _PIN_FAILURES:
        raise ConfigError(f"{kek}: login to token {kek.token} failed (check the PIN)") from None
    except pkcs11.PKCS11Error as error:
        raise ConfigError(f"{kek}: token {kek.token} cannot be opened ({_name(error)})") from None


def find_kek(session: Any, kek: Pkcs11Kek) -> Any:
    try:
        key = session.get_key(object_class=ObjectClass.SECRET_KEY, label=kek.label)
    except p11.NoSuchKey:
        raise ConfigError(
            f"{kek}: the token has no key labelled {kek.label!r} "
            f"(create it with `xks-proxy pkcs11 create-kek --kek '{kek.uri}'`)"
        ) from None
    except p11.MultipleObjectsReturned:
        raise ConfigError(f"{kek}: several keys are labelled {kek.label!r}") from None
    if key.key_type != KeyType.AES or not (key[Attribute.WRAP] and key[Attribute.UNWRAP]):
        raise ConfigError(f"{kek}: {kek.label!r} is not an AES key with CKA_WRAP and CKA_UNWRAP")
    return key


def create_kek(kek: Pkcs11Kek) -> None:
    """A new non-extractable AES-256 key on the token that can only wrap and unwrap.

    Raises ``FileExistsError`` when the token has a key with that label already."""
    session = open_session(kek, rw=True)
    try:
        try:
            session.get_key(object_class=ObjectClass.SECRET_KEY, label=kek.label)
        except p11.NoSuchKey:
            pass
        except p11.MultipleObjectsReturned:
            raise FileExistsError(kek.label) from None
        else:
            raise FileExistsError(kek.label)
        session.generate_key(
            KeyType.AES,
            256,
            label=kek.label,
            id=kek.label.encode(),
            store=True,
            template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                # Least privilege: it wraps the store's rows and does nothing else.
                Attribute.WRAP: True,
                Attribute.UNWRAP: True,
                Attribute.ENCRYPT: False,
                Attribute.DECRYPT: False,
                Attribute.SIGN: False,
                Attribute.VERIFY: False,
                Attribute.DERIVE: False,
            },
        )
    finally:
        session.close()


class HsmKeySealer(KeySealer):
    kind = "pkcs11"
    remote = True

    def __init__(self, kek: Pkcs11Kek, location: str) -> None:
        super().__init__(location)
        self._kek = kek
        self._lock = threading.Lock()
        self._session: Any = None
        self._key: Any = None
        self._retry_after = 0.0
        # Why the HSM cannot be used now (health DEGRADED), or None.
        self.problem: str | None = None
        with self._lock:
            self._connect()
            try:
                self._check_value = check_value(self._wrap(CHECK_PLAINTEXT))
            except p11.PKCS11Error as error:
                self._disconnect()
                raise ConfigError(f"{kek}: wrapping with it failed ({_name(error)})") from None

    def __str__(self) -> str:
        return f"{self._kek} (check value {self._check_value})"

    def check_value(self) -> str:
        return self._check_value

    def close(self) -> None:
        with self._lock:
            self._disconnect()

    def probe(self) -> None:
        self._call(lambda: None)

    def _connect(self) -> None:
        session = open_session(self._kek)
        try:
            self._key = find_kek(session, self._kek)
        except BaseException:
            session.close()
            raise
        self._session = session
        # A reconnect must find the same key under the label, not a replacement.
        if hasattr(self, "_check_value") and not self._kek_answers():
            self._disconnect()
            raise ConfigError(f"{self._kek}: the key under this label is no longer the same KEK")

    def _disconnect(self) -> None:
        if self._session is not None:
            with contextlib.suppress(Exception):
                self._session.close()
        self._session = self._key = None

    def _wrap(self, payload: bytes) -> bytes:
        template = {
            **_PAYLOAD_TEMPLATE,
            Attribute.CLASS: ObjectClass.SECRET_KEY,
            Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
            Attribute.VALUE: payload,
        }
        payload_object = self._session.create_object(template)
        try:
            wrapped: bytes = self._key.wrap_key(
                payload_object, mechanism=Mechanism.AES_KEY_WRAP_PAD
            )
        finally:
            payload_object.destroy()
        return wrapped

    def _unwrap(self, wrapped: bytes) -> bytes | None:
        try:
            payload_object = self._key.unwrap_key(
                ObjectClass.SECRET_KEY,
                KeyType.GENERIC_SECRET,
                wrapped,
                mechanism=Mechanism.AES_KEY_WRAP_PAD,
                template=dict(_PAYLOAD_TEMPLATE),
            )
        except _UNREACHABLE:
            raise
        except p11.PKCS11Error:
            # The row does not authenticate under this KEK (SoftHSM: CKR_GENERAL_ERROR, others
            # CKR_WRAPPED_KEY_INVALID or _LEN_RANGE), unless the KEK itself stopped working.
            if not self._kek_answers():
                raise KekLostError() from None
            return None
        try:
            payload: bytes = payload_object[Attribute.VALUE]
        finally:
            payload_object.destroy()
        return payload

    def _kek_answers(self) -> bool:
        """Whether the KEK still wraps the check constant to its check value."""
        try:
            return check_value(self._wrap(CHECK_PLAINTEXT)) == self._check_value
        except p11.PKCS11Error:
            return False

    def _call(self, operation: Callable[[], T]) -> T:
        """``operation`` on a live session; one reconnect when the session or token failed."""
        with self._lock:
            if self._session is None and time.monotonic() < self._retry_after:
                raise KeyStoreUnavailableError(self.problem or f"{self._kek} is unavailable")
            for _ in range(2):
                try:
                    if self._session is None:
                        self._connect()
                    result = operation()
                except _RECONNECT as error:
                    self._disconnect()
                    self.problem = (
                        str(error)
                        if isinstance(error, ConfigError)
                        else f"{self._kek}: the HSM failed ({_describe(error)})"
                    )
                    continue
                self.problem = None
                return result
            self._retry_after = time.monotonic() + RECONNECT_INTERVAL_SECONDS
            raise KeyStoreUnavailableError(self.problem or f"{self._kek} is unavailable")

    def _seal(self, plaintext: bytes, binding: bytes) -> SealedVersion:
        return SealedVersion(b"", self._call(lambda: self._wrap(frame(plaintext, binding))))

    def _unseal(self, sealed: SealedVersion, binding: bytes) -> bytes | None:
        if sealed.nonce:
            return None  # an AES-GCM row of a software KEK
        payload = self._call(lambda: self._unwrap(sealed.sealed))
        return None if payload is None else unframe(payload, binding)


def _name(error: Exception) -> str:
    return type(error).__name__


def _describe(error: Exception) -> str:
    if isinstance(error, KekLostError):
        return "the KEK no longer answers with its check value"
    return _name(error)
