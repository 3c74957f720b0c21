"""The four XKS operations, between the parsed request and the key backend.

Checks run in the order xks-spec §7.4 suggests, after the web layer has done routing, SigV4 and
body validation: key exists (404) → secondary authorization (403, only when the key store has
an ``authorization_policy``; before any backend call, as in AWS's sample, so a denied caller
learns nothing from the EKM) → implementation size limits (501) → key state (400
InvalidStateException) → key usage (400 InvalidKeyUsageException) → crypto.

Encrypt with a CDIV request follows §5.3: encrypt, compute the CDIV at once, then prove the
result decrypts before answering, retrying once. A CDIV is KMS's assurance that the ciphertext
decrypts; a key whose usage forbids DECRYPT cannot give that proof, so a CDIV request on it is
400 InvalidKeyUsageException (as AWS's conformance tooling expects), never an unverified CDIV.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import re
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import pybase64

from xks_proxy.aad import MAX_AAD_BYTES, cdiv
from xks_proxy.backends.base import AES_256, DECRYPT, ENCRYPT, Backend, KeyInfo, SealedData
from xks_proxy.config import HealthConfig, KeyStoreConfig
from xks_proxy.errors import (
    InternalError,
    InvalidCiphertextError,
    InvalidKeyUsageError,
    InvalidStateError,
    KeyNotFoundError,
    ThrottlingError,
    UnsupportedOperationError,
    XksError,
)
from xks_proxy.health import HealthMonitor
from xks_proxy.metrics import SUCCESS, ProxyMetrics
from xks_proxy.model import (
    DecryptRequest,
    EncryptRequest,
    HealthRequest,
    KeyMetadataRequest,
    RequestMetadata,
)
from xks_proxy.ratelimit import TokenBucket
from xks_proxy.safelog import log_unexpected
from xks_proxy.sigv4 import Credential

if TYPE_CHECKING:
    from xks_proxy.authz.authorizer import Authorizer

log = logging.getLogger(__name__)
T = TypeVar("T")
# XKS spec §4.1: at most 10 keyUsage values.
MAX_KEY_USAGE_VALUES = 10
ENCRYPT_ATTEMPTS = 2


def b64(data: bytes) -> str:
    # pybase64 (SIMD): a fraction of the standard library's time on a 4 KiB answer.
    return pybase64.b64encode_as_string(data)


@dataclass(frozen=True, slots=True)
class KeyStore:
    """A configured key store bound to its backend and its live credentials."""

    config: KeyStoreConfig
    backend: Backend
    credentials: Mapping[str, Credential]
    key_filter: re.Pattern[str]
    rate_limit: TokenBucket | None
    authorizer: Authorizer | None = None

    @classmethod
    def build(
        cls,
        config: KeyStoreConfig,
        backend: Backend,
        authorizer: Authorizer | None = None,
        credentials: Mapping[str, Credential] | None = None,
    ) -> KeyStore:
        """``credentials``: live ones (``LiveCredentials``); default the configuration's."""
        pattern = "|".join(f"(?:{fnmatch.translate(p)})" for p in config.key_patterns)
        rate_limit = None
        if config.requests_per_second and config.burst:
            rate_limit = TokenBucket(config.requests_per_second, config.burst)
        return cls(
            config=config,
            backend=backend,
            credentials=(
                credentials
                if credentials is not None
                else {c.access_key_id: c for c in config.credentials}
            ),
            key_filter=re.compile(pattern),
            rate_limit=rate_limit,
            authorizer=authorizer,
        )

    def admit(self) -> None:
        """Apply the key store's request quota; raises ThrottlingError over it."""
        if self.rate_limit is not None and not self.rate_limit.try_acquire():
            raise ThrottlingError(f"Key store {self.name} is over its request quota.")

    @property
    def name(self) -> str:
        return self.config.name


class XksService:
    def __init__(
        self, health: HealthMonitor, health_config: HealthConfig, metrics: ProxyMetrics
    ) -> None:
        self._health = health
        self._health_config = health_config
        self._metrics = metrics

    async def _backend_call(self, backend: Backend, call: str, awaitable: Awaitable[T]) -> T:
        started = time.perf_counter()
        outcome = SUCCESS
        try:
            return await awaitable
        except XksError as error:
            outcome = error.error_name
            raise
        except Exception as error:
            outcome = InternalError.error_name
            # A backend bug: the client gets a generic 500, the log no message (safelog).
            log_unexpected(log, logging.ERROR, f"backend {backend.name} in {call}", error)
            raise InternalError() from None
        finally:
            self._metrics.observe_backend(
                backend.name, call, outcome, time.perf_counter() - started
            )

    async def _key(
        self, store: KeyStore, key_id: str, operation: str, metadata: RequestMetadata
    ) -> KeyInfo:
        # A key the key store may not use is, for that key store, a key that does not exist.
        if not store.key_filter.fullmatch(key_id):
            raise KeyNotFoundError()
        if store.authorizer is not None:
            store.authorizer.check(key_id, operation, metadata)
        backend = store.backend
        info = await self._backend_call(backend, "describe_key", backend.describe_key(key_id))
        if key_id in store.config.disabled_keys:
            return dataclasses.replace(info, enabled=False)
        return info

    @staticmethod
    def _check_usable(info: KeyInfo, aad: bytes | None, usage: str) -> None:
        if aad is not None and len(aad) > MAX_AAD_BYTES:
            # XKS spec §7.2: 501 for sizes above the spec minimum this proxy cannot take.
            raise UnsupportedOperationError("additionalAuthenticatedData over 65535 bytes.")
        if not info.enabled:
            raise InvalidStateError("The external key is disabled.")
        if info.key_spec != AES_256:
            raise InvalidKeyUsageError("The external key is not a 256-bit AES key.")
        if usage not in info.usage:
            raise InvalidKeyUsageError(f"The external key does not allow {usage}.")

    async def get_key_metadata(
        self, store: KeyStore, key_id: str, request: KeyMetadataRequest
    ) -> dict[str, Any]:
        info = await self._key(store, key_id, "GetKeyMetadata", request.metadata)
        return {
            "keySpec": info.key_spec,
            "keyUsage": sorted(info.usage)[:MAX_KEY_USAGE_VALUES],
            "keyStatus": "ENABLED" if info.enabled else "DISABLED",
        }

    async def encrypt(
        self, store: KeyStore, key_id: str, request: EncryptRequest
    ) -> dict[str, Any]:
        info = await self._key(store, key_id, "Encrypt", request.metadata)
        self._check_usable(info, request.aad, ENCRYPT)
        if request.want_cdiv and DECRYPT not in info.usage:
            raise InvalidKeyUsageError(
                "A ciphertextDataIntegrityValue needs a key that allows DECRYPT, "
                "to prove that the ciphertext decrypts."
            )
        for _ in range(ENCRYPT_ATTEMPTS):
            result = await self._backend_call(
                store.backend,
                "encrypt",
                store.backend.encrypt(key_id, request.plaintext, request.aad),
            )
            # XKS spec §5.3: compute the CDIV before the verifying decrypt, never after.
            digest = (
                cdiv(
                    request.aad,
                    result.ciphertext_metadata,
                    result.iv,
                    result.ciphertext,
                    result.tag,
                )
                if request.want_cdiv
                else None
            )
            if digest is None or await self._decrypts_to(store, key_id, request, result):
                return _encrypt_response(result, digest)
            log.error("encrypt result for key store %s did not decrypt; retrying", store.name)
        raise InternalError("The encryption result could not be verified.")

    async def _decrypts_to(
        self, store: KeyStore, key_id: str, request: EncryptRequest, result: SealedData
    ) -> bool:
        backend = store.backend
        try:
            plaintext = await self._backend_call(
                backend,
                "verify_decrypt",
                backend.decrypt(key_id, result, request.aad),
            )
        except InvalidCiphertextError:
            return False
        return plaintext == request.plaintext

    async def decrypt(
        self, store: KeyStore, key_id: str, request: DecryptRequest
    ) -> dict[str, Any]:
        info = await self._key(store, key_id, "Decrypt", request.metadata)
        self._check_usable(info, request.aad, DECRYPT)
        backend = store.backend
        plaintext = await self._backend_call(
            backend,
            "decrypt",
            backend.decrypt(key_id, _sealed(request), request.aad),
        )
        return {"plaintext": b64(plaintext)}

    def health(self, store: KeyStore, request: HealthRequest) -> dict[str, Any]:
        config = self._health_config
        return {
            "xksProxyFleetSize": config.fleet_size,
            "xksProxyVendor": config.proxy_vendor,
            "xksProxyModel": config.proxy_model,
            "ekmVendor": config.ekm_vendor or store.backend.vendor,
            "ekmFleetDetails": [
                {"id": ekm.ekm_id, "model": ekm.model, "healthStatus": ekm.state.value}
                for ekm in self._health.status(store.backend.name)
            ],
        }


def _sealed(request: DecryptRequest) -> SealedData:
    return SealedData(
        ciphertext=request.ciphertext,
        iv=request.iv,
        tag=request.tag,
        ciphertext_metadata=request.ciphertext_metadata,
    )


def _encrypt_response(result: SealedData, digest: bytes | None) -> dict[str, Any]:
    response = {
        "ciphertext": b64(result.ciphertext),
        "initializationVector": b64(result.iv),
        "authenticationTag": b64(result.tag),
    }
    if result.ciphertext_metadata is not None:
        response["ciphertextMetadata"] = b64(result.ciphertext_metadata)
    if digest is not None:
        response["ciphertextDataIntegrityValue"] = b64(digest)
    return response
