"""How the emulator calls an XKS proxy: as AWS KMS does (kms-emulator.md, xks-spec §9.1).

Every call is SigV4-signed with the key store's credential (the shared ``sigv4`` module) for the
region the client called, carries the KMS request's id as ``kmsRequestId`` (as AWS KMS does:
the id a client sees as its RequestId, and the event log's requestID), has a 250 ms timeout and is
retried once after a network timeout. Failures come back as ``ProxyCallError``.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from xks_proxy import sigv4
from xks_proxy.aad import cdiv
from xks_proxy.kms_emulator.errors import ProxyCallError, ProxyFailure

DEFAULT_TIMEOUT_SECONDS = 0.25


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ProxyCallError(ProxyFailure.MALFORMED)
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise ProxyCallError(ProxyFailure.MALFORMED) from None


@dataclass(frozen=True)
class ProxyEndpoint:
    endpoint: str  # scheme://host[:port]
    uri_path: str
    credential: sigv4.Credential
    region: str


@dataclass(frozen=True)
class Caller:
    """Who called KMS, for requestMetadata."""

    principal_arn: str
    kms_operation: str
    key_arn: str | None = None
    # The KMS request's id: the proxy's audit line carries it as kmsRequestId, so a developer
    # can find the proxy call behind a KMS call. Empty: a fresh UUID.
    request_id: str = ""


@dataclass(frozen=True)
class XksCiphertext:
    ciphertext: bytes
    iv: bytes
    tag: bytes
    metadata: bytes | None


class XksClient:
    def __init__(
        self, timeout: float = DEFAULT_TIMEOUT_SECONDS, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._timeout = timeout
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl if self._ssl else True)
            )
        return self._session

    async def _post(self, proxy: ProxyEndpoint, suffix: str, document: dict[str, Any]) -> Any:
        path = proxy.uri_path + suffix
        body = orjson.dumps(document)
        for attempt in range(2):
            headers = sigv4.sign(
                method="POST",
                path=path,
                headers={
                    "Host": urlsplit(proxy.endpoint).netloc,
                    "Content-Type": "application/json",
                },
                body=body,
                credential=proxy.credential,
                region=proxy.region,
                now=datetime.now(UTC),
            )
            try:
                async with asyncio.timeout(self._timeout):
                    response = await self._client().post(
                        proxy.endpoint + path, data=body, headers=headers
                    )
                    payload = await response.read()
            except TimeoutError:
                if attempt == 0:
                    continue  # AWS KMS retries once after a network timeout
                raise ProxyCallError(ProxyFailure.TIMEOUT) from None
            except aiohttp.ClientSSLError:
                raise ProxyCallError(ProxyFailure.TLS) from None
            except (aiohttp.ClientError, OSError):
                raise ProxyCallError(ProxyFailure.TCP) from None
            return _decode(response.status, payload)
        raise AssertionError("unreachable")

    @staticmethod
    def _metadata(caller: Caller) -> dict[str, str]:
        metadata = {
            "awsPrincipalArn": caller.principal_arn,
            "kmsOperation": caller.kms_operation,
            "kmsRequestId": caller.request_id or str(uuid.uuid4()),
        }
        if caller.key_arn is not None:
            metadata["kmsKeyArn"] = caller.key_arn
        return metadata

    async def health(
        self, proxy: ProxyEndpoint, kms_operation: str, request_id: str = ""
    ) -> list[str]:
        """The EKM states; raises ProxyCallError(ALL_UNAVAILABLE) when every EKM is UNAVAILABLE."""
        answer = await self._post(
            proxy,
            "/health",
            {
                "requestMetadata": {
                    "kmsRequestId": request_id or str(uuid.uuid4()),
                    "kmsOperation": kms_operation,
                }
            },
        )
        try:
            states = [str(e["healthStatus"]) for e in answer["ekmFleetDetails"]]
        except (KeyError, TypeError):
            raise ProxyCallError(ProxyFailure.MALFORMED) from None
        if not states or all(state == "UNAVAILABLE" for state in states):
            raise ProxyCallError(ProxyFailure.ALL_UNAVAILABLE)
        return states

    async def key_metadata(self, proxy: ProxyEndpoint, key_id: str, caller: Caller) -> Any:
        metadata = self._metadata(
            Caller(caller.principal_arn, caller.kms_operation, request_id=caller.request_id)
        )
        return await self._post(proxy, f"/keys/{key_id}/metadata", {"requestMetadata": metadata})

    async def encrypt(
        self,
        proxy: ProxyEndpoint,
        key_id: str,
        plaintext: bytes,
        aad: bytes,
        caller: Caller,
        *,
        integrity: bool,
    ) -> XksCiphertext:
        document: dict[str, Any] = {
            "requestMetadata": self._metadata(caller),
            "plaintext": b64(plaintext),
            "encryptionAlgorithm": "AES_GCM",
            "additionalAuthenticatedData": b64(aad),
        }
        if integrity:
            document["ciphertextDataIntegrityValueAlgorithm"] = "SHA_256"
        answer = await self._post(proxy, f"/keys/{key_id}/encrypt", document)
        try:
            result = XksCiphertext(
                ciphertext=unb64(answer["ciphertext"]),
                iv=unb64(answer["initializationVector"]),
                tag=unb64(answer["authenticationTag"]),
                metadata=unb64(answer["ciphertextMetadata"])
                if "ciphertextMetadata" in answer
                else None,
            )
        except (KeyError, TypeError):
            raise ProxyCallError(ProxyFailure.MALFORMED) from None
        if (
            len(result.ciphertext) != len(plaintext)
            or len(result.tag) != 16
            or len(result.iv) not in (12, 16)
            or len(result.metadata or b"") > 20
        ):
            raise ProxyCallError(ProxyFailure.MALFORMED)
        if integrity:
            # xks-spec §5.3: KMS recomputes the CDIV and fails the call on a mismatch.
            expected = cdiv(aad, result.metadata, result.iv, result.ciphertext, result.tag)
            if unb64(answer.get("ciphertextDataIntegrityValue")) != expected:
                raise ProxyCallError(ProxyFailure.BAD_RESULT)
        return result

    async def decrypt(
        self, proxy: ProxyEndpoint, key_id: str, sealed: XksCiphertext, aad: bytes, caller: Caller
    ) -> bytes:
        document: dict[str, Any] = {
            "requestMetadata": self._metadata(caller),
            "ciphertext": b64(sealed.ciphertext),
            "initializationVector": b64(sealed.iv),
            "authenticationTag": b64(sealed.tag),
            "encryptionAlgorithm": "AES_GCM",
            "additionalAuthenticatedData": b64(aad),
        }
        if sealed.metadata is not None:
            document["ciphertextMetadata"] = b64(sealed.metadata)
        answer = await self._post(proxy, f"/keys/{key_id}/decrypt", document)
        try:
            return unb64(answer["plaintext"])
        except (KeyError, TypeError):
            raise ProxyCallError(ProxyFailure.MALFORMED) from None


def _decode(status: int, payload: bytes) -> Any:
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise ProxyCallError(ProxyFailure.MALFORMED) from None
    if status == 200 and isinstance(document, dict):
        return document
    name = document.get("errorName") if isinstance(document, dict) else None
    # Only the spec's errorNames count; anything else is a malformed answer (xks-spec §7.1).
    if isinstance(name, str) and name.endswith("Exception"):
        try:
            raise ProxyCallError(ProxyFailure(name))
        except ValueError:
            pass
    raise ProxyCallError(ProxyFailure.MALFORMED)
