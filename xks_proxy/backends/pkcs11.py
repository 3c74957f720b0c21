"""The PKCS#11 backend: keys in HSM tokens, reached through python-pkcs11.

* Tokens are chosen by label or serial. Several tokens of one backend are replicas holding the
  same keys (an HSM cluster seen as separate slots): requests go to the first healthy one, and
  each token is one ``ekmFleetDetails`` entry, ACTIVE or UNAVAILABLE (xks-spec §4.4: one entry
  per EKM instance; KMS counts the states).
* Sessions: each token (``pkcs11_tokens``) has a fixed pool of sessions opened without a PIN
  and one extra session that logs in and stays open. A request waits for a free session up to
  ``session_wait_ms`` and then answers DependencyTimeoutException. A session only returns to
  the pool when its thread is done with it, even if the request gave up earlier.
* Blocking PKCS#11 calls run on call threads (``call_threads``; python-pkcs11 releases the GIL):
  a network HSM may take long to answer, and the request deadline must still answer 503
  meanwhile. Only a module known to answer in process in microseconds (SoftHSM2) has its calls
  on the event loop thread, skipping the hop to a thread and back, on SoftHSM2 a larger
  per-request cost than the module's own work: ``calls_on_event_loop = "auto"`` (the default)
  chooses this by the module's identity and falls back to threads after one slow call, ``true``
  forces it (``pkcs11_placement``). A call on the loop that blocks stalls every request of the
  worker, and the deadline cannot interrupt it. The module is initialised for OS locking either
  way (see ``pkcs11_library``).
* Key objects, their versions and their descriptions come from ``pkcs11_keys.KeyFinder``
  (which says how a running proxy learns of a rotation made elsewhere, within
  ``VERSION_RESCAN_SECONDS``); descriptions are cached for ``DESCRIBE_TTL_SECONDS``.
* Key versions (``pkcs11_versions``): version 1 is the object named by the key id, version n ≥ 2
  the object named ``<key id>#<n>`` (``xks-proxy keys rotate``). Encrypt uses the newest and
  records it in ciphertextMetadata in the software backend's layout (``aad.CiphertextMetadata``;
  this backend always wrote it, version 1 before rotation existed). Decrypt uses the version
  the metadata names. A version the key lacks, or metadata that does not parse, is
  InvalidCiphertextException once the token is confirmed: the metadata is part of what Encrypt
  returned, and any change to it makes a ciphertext that does not decrypt (xks-spec §4.3,
  §7.2); the key exists, so it is not KeyNotFoundException.
* Errors are translated once, by ``pkcs11_errors.translate``. A session or device failure
  discards the session (it is reopened on next use), marks the token unhealthy until the next
  health check, and answers InternalException (retryable). A failure that would blame the
  request (KeyNotFoundException, InvalidCiphertextException: permanent for KMS) is first
  confirmed by finding the health key in the same session: a token that lost even that one is
  a lost token, never a missing key (issue 9, finding 3: a token whose storage vanished
  answers every lookup with "no such object").
* Health: a real AES-GCM encrypt and decrypt with the health key on each token. When a token
  fails, the backend finalises and initialises the module again and reconnects (at most every
  ``RECONNECT_INTERVAL_SECONDS``), which is also how it notices a token that came back. While
  no token works, requests answer InternalException at once.
* GetKeyMetadata: see ``KeyFinder.describe``. PKCS#11 has no on/off state of its own, so the
  key store's ``disabled_keys`` kill switch is the way to disable an HSM key.
* IVs: with ``iv_source = "proxy"`` each IV is 12 random bytes from the OS; with ``"token"``
  the HSM writes the IV into the parameter buffer (CloudHSM, Luna in FIPS mode), and an IV the
  token left untouched fails the request instead of encrypting under a fixed IV.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pkcs11 import Mechanism, ObjectClass
from pkcs11 import exceptions as p11

from xks_proxy.aad import CiphertextMetadata, ekm_aad
from xks_proxy.backends import pkcs11_library
from xks_proxy.backends.base import (
    Backend,
    EkmHealth,
    HealthState,
    KeyInfo,
    SealedData,
)
from xks_proxy.backends.call_threads import CallThreads
from xks_proxy.backends.pkcs11_errors import (
    SESSION_FAILURES,
    TokenLostError,
    translate,
)
from xks_proxy.backends.pkcs11_keys import HEALTH_KEY, KeyFinder, PooledSession
from xks_proxy.backends.pkcs11_placement import CallPlacement
from xks_proxy.backends.pkcs11_tokens import PooledToken
from xks_proxy.backends.pkcs11_versions import FIRST_VERSION
from xks_proxy.backends.session_pool import SessionPoolObserver, SilentObserver
from xks_proxy.config import Pkcs11BackendConfig
from xks_proxy.errors import (
    ConfigError,
    DependencyTimeoutError,
    InternalError,
    InvalidCiphertextError,
    InvalidKeyUsageError,
    KeyNotFoundError,
    XksError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
IV_BYTES = 12
TAG_BYTES = 16
DESCRIBE_TTL_SECONDS = 5.0
# Reinitialising the module when a token fails is worth it at most this often.
RECONNECT_INTERVAL_SECONDS = 10.0
_HEALTH_PLAINTEXT = b"xks-proxy health check"


class Pkcs11Backend:
    def __init__(
        self, config: Pkcs11BackendConfig, pool_observer: SessionPoolObserver | None = None
    ) -> None:
        self._config = config
        self._tokens = [PooledToken(selector, config.sessions) for selector in config.tokens]
        self._observer = pool_observer or SilentObserver()
        for token in self._tokens:
            self._observer.pool_size(token.ekm_id, config.sessions)
        self._threads = CallThreads(
            config.sessions * len(self._tokens) + 1, f"pkcs11-{config.name}"
        )
        self._placement = CallPlacement(config, self._observer.calls_on_event_loop)
        self._library: Any = None
        self._keys = KeyFinder(config.key_lookup, config.health_key_label)
        self._described: dict[str, tuple[float, KeyInfo]] = {}
        self._reconnecting = asyncio.Lock()
        self._last_reconnect = -RECONNECT_INTERVAL_SECONDS

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def vendor(self) -> str:
        return self._config.vendor or self._tokens[0].manufacturer or "PKCS#11"

    # -- connection, on a pool thread ------------------------------------------------------------
    def _ensure(self, token: PooledToken, pooled: PooledSession) -> Any:
        return token.ensure(pooled, self._library, self._config.user_pin, self._config.model)

    def _connect_all(self) -> None:
        self._library = pkcs11_library.load(self._config.module)
        for token in self._tokens:
            try:
                session = self._ensure(token, token.sessions[0])
            except p11.NoSuchToken:
                raise ConfigError(
                    f"backends.{self.name}.tokens: no token with {token.selector} in "
                    f"{self._config.module}"
                ) from None
            except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange, p11.PinLocked):
                raise ConfigError(
                    f"backends.{self.name}.user_pin: login to the token with "
                    f"{token.selector} failed: the PIN is incorrect or locked"
                ) from None
            try:
                session.get_key(
                    object_class=ObjectClass.SECRET_KEY, label=self._config.health_key_label
                )
            except p11.NoSuchKey:
                raise ConfigError(
                    f"backends.{self.name}.health_key_label: no AES key labelled "
                    f"{self._config.health_key_label!r} on the token with {token.selector}; "
                    "create it with `xks-proxy pkcs11 create-key --health`"
                ) from None

    # -- the pool ------------------------------------------------------------------------------
    async def _call(
        self, token: PooledToken, work: Callable[[PooledSession], T], *, decrypting: bool = False
    ) -> T:
        """Run ``work`` on a free session of ``token`` on a call thread (or, with the calls on
        the event loop, right here)."""
        observer, ekm_id = self._observer, token.ekm_id
        try:
            pooled = token.pool.get_nowait()  # the common case costs no timer
            observer.waited(ekm_id, 0.0)
        except asyncio.QueueEmpty:
            started = time.monotonic()
            observer.waiting(ekm_id, 1)
            try:
                pooled = await asyncio.wait_for(
                    token.pool.get(), self._config.session_wait_ms / 1000
                )
            except TimeoutError:
                raise DependencyTimeoutError("No HSM session became free in time.") from None
            finally:
                observer.waiting(ekm_id, -1)
                observer.waited(ekm_id, time.monotonic() - started)
        observer.in_use(ekm_id, 1)

        def give_back() -> None:
            observer.in_use(ekm_id, -1)
            token.pool.put_nowait(pooled)

        def run() -> T:
            try:
                self._ensure(token, pooled)
                try:
                    return work(pooled)
                except (p11.PKCS11Error, XksError) as error:
                    if not translate(error, decrypting=decrypting).retryable:
                        self._keys.confirm_token(pooled)
                    raise
            except SESSION_FAILURES:
                pooled.discard()
                raise

        try:
            if self._placement.on_loop:
                try:
                    return self._placement.run(run)
                finally:
                    give_back()
            # The session goes back when the thread is done with it, not when the request gives up.
            return await self._threads.run(run, then=give_back)
        except (p11.PKCS11Error, AttributeError, TokenLostError, XksError) as error:
            if isinstance(error, SESSION_FAILURES):
                token.healthy = False
                log.warning("PKCS#11 session on token %s failed: %s", token.ekm_id,
                            type(error).__name__)  # fmt: skip
            if isinstance(error, AttributeError):
                # python-pkcs11 gives a key no encrypt/decrypt method when its flags forbid it.
                raise InvalidKeyUsageError("The HSM key does not permit this operation.") from None
            raise translate(error, decrypting=decrypting) from None

    async def _blocking(self, call: Callable[[], T]) -> T:
        """A call outside the session pool (start-up, close, reinitialising the module)."""
        if self._placement.on_loop:
            return self._placement.run(call)  # no thread is ever started
        return await self._threads.run(call)

    def _token(self) -> PooledToken:
        for token in self._tokens:
            if token.healthy:
                return token
        raise InternalError("No HSM token is available.")

    # -- Backend -------------------------------------------------------------------------------
    async def open(self) -> None:
        if self._config.calls_on_event_loop == "auto":
            # Which module this is is known once it is loaded: until then, off the loop.
            await asyncio.to_thread(self._connect_all)
        else:
            await self._blocking(self._connect_all)
        self._placement.choose(self._library)

    async def close(self) -> None:
        def close_all() -> None:
            for token in self._tokens:
                for each in token.sessions:
                    each.discard()
                if token.login is not None:
                    with contextlib.suppress(p11.PKCS11Error):
                        token.login.close()
                token.forget()

        await self._blocking(close_all)
        self._threads.close()

    async def describe_key(self, key_id: str) -> KeyInfo:
        cached = self._described.get(key_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        if key_id == self._config.health_key_label:
            raise KeyNotFoundError()  # the health key is never a customer key
        info = await self._call(self._token(), lambda s: self._keys.describe(s, key_id))
        self._described[key_id] = (time.monotonic() + DESCRIBE_TTL_SECONDS, info)
        return info

    def _encrypt_in_session(
        self, pooled: PooledSession, key_id: str, plaintext: bytes, aad: bytes | None
    ) -> SealedData:
        version = self._keys.newest(pooled, key_id)
        metadata = CiphertextMetadata(key_version=version).encode()
        token_iv = self._config.iv_source == "token"
        iv = bytes(IV_BYTES) if token_iv else os.urandom(IV_BYTES)
        params = pkcs11_library.GcmParams(iv, ekm_aad(aad, metadata))
        sealed = self._keys.with_key(
            pooled,
            key_id,
            version,
            lambda key: key.encrypt(
                plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=params.raw()
            ),
        )
        if token_iv:
            iv = params.iv_after_call()
            if iv == bytes(IV_BYTES):
                raise InternalError("The HSM did not generate an IV; set iv_source = proxy.")
        if len(sealed) != len(plaintext) + TAG_BYTES:
            raise InternalError("The HSM returned AES-GCM output of an unexpected length.")
        return SealedData(sealed[:-TAG_BYTES], iv, sealed[-TAG_BYTES:], metadata)

    async def encrypt(self, key_id: str, plaintext: bytes, aad: bytes | None) -> SealedData:
        return await self._call(
            self._token(), lambda s: self._encrypt_in_session(s, key_id, plaintext, aad)
        )

    def _decrypt_in_session(
        self, pooled: PooledSession, key_id: str, sealed: SealedData, aad: bytes | None
    ) -> bytes:
        try:
            version = CiphertextMetadata.decode(sealed.ciphertext_metadata).key_version
        except ValueError:
            raise InvalidCiphertextError() from None
        if version < FIRST_VERSION:
            raise InvalidCiphertextError()
        try:
            self._keys.key(pooled, key_id, version)  # which version: an error of its own
        except p11.NoSuchKey:
            if version == FIRST_VERSION:
                raise  # the key itself is missing: KeyNotFoundException
            raise InvalidCiphertextError() from None  # a version this key never had
        self._keys.learn(key_id, version)
        params = pkcs11_library.GcmParams(sealed.iv, ekm_aad(aad, sealed.ciphertext_metadata))
        plaintext: bytes = self._keys.with_key(
            pooled,
            key_id,
            version,
            lambda key: key.decrypt(
                sealed.ciphertext + sealed.tag,
                mechanism=Mechanism.AES_GCM,
                mechanism_param=params.raw(),
            ),
        )
        return plaintext

    async def decrypt(self, key_id: str, sealed: SealedData, aad: bytes | None) -> bytes:
        return await self._call(
            self._token(),
            lambda s: self._decrypt_in_session(s, key_id, sealed, aad),
            decrypting=True,
        )

    def _probe_in_session(self, pooled: PooledSession) -> bool:
        sealed = self._encrypt_in_session(pooled, HEALTH_KEY, _HEALTH_PLAINTEXT, None)
        plaintext = self._decrypt_in_session(pooled, HEALTH_KEY, sealed, None)
        return plaintext == _HEALTH_PLAINTEXT

    async def _probe(self, token: PooledToken) -> bool:
        try:
            healthy = await self._call(token, self._probe_in_session)
        except Exception as error:
            log.warning("health check of token %s failed: %s", token.ekm_id,
                        type(error).__name__)  # fmt: skip
            healthy = False
        token.healthy = healthy
        return healthy

    async def check_health(self) -> list[EkmHealth]:
        results = [await self._probe(token) for token in self._tokens]
        now = time.monotonic()
        if not all(results) and now - self._last_reconnect >= RECONNECT_INTERVAL_SECONDS:
            # Some modules (SoftHSM among them) only notice a token that came back when they
            # are initialised again; healthy tokens pause for the moment this takes.
            self._last_reconnect = now
            await self._reconnect()
            results = [await self._probe(token) for token in self._tokens]
        return [
            EkmHealth(
                ekm_id=token.ekm_id,
                model=token.model,
                state=HealthState.ACTIVE if ok else HealthState.UNAVAILABLE,
            )
            for token, ok in zip(self._tokens, results, strict=True)
        ]

    async def _reconnect(self) -> None:
        """Finalise and initialise the module again, with every session out of every pool."""
        async with self._reconnecting:
            taken: list[tuple[PooledToken, PooledSession]] = []
            try:
                for token in self._tokens:
                    for _ in token.sessions:
                        taken.append((token, await asyncio.wait_for(token.pool.get(), 10)))
            except TimeoutError:
                log.warning("PKCS#11 reconnect skipped: a session is still busy")
            else:
                try:
                    await self._blocking(self._reinitialize)
                    log.info("PKCS#11 module %s initialised again", self._config.module)
                except Exception as error:
                    log.warning("PKCS#11 reinitialisation failed: %s", type(error).__name__)
            finally:
                for token, pooled in taken:
                    token.pool.put_nowait(pooled)
            self._described.clear()

    def _reinitialize(self) -> None:
        for token in self._tokens:
            token.forget()
        self._library = pkcs11_library.reinitialize(self._config.module)

    # -- for tests and provisioning ---------------------------------------------------------------
    async def hold_session(self, token_index: int = 0) -> PooledSession:
        """Take a session out of the pool (tests of pool exhaustion); give it back with
        ``release_session``."""
        return await self._tokens[token_index].pool.get()

    def release_session(self, pooled: PooledSession, token_index: int = 0) -> None:
        self._tokens[token_index].pool.put_nowait(pooled)


_conforms: type[Backend] = Pkcs11Backend
