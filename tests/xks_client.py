"""A small test client that signs XKS requests with our own ``sigv4.sign`` and posts them."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from xks_proxy import sigv4


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def crypto_metadata(operation: str) -> dict[str, str]:
    return {
        "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
        "kmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "kmsOperation": operation,
        "kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae",
    }


def encrypt_body(plaintext: bytes, aad: bytes | None = None, cdiv: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "requestMetadata": crypto_metadata("Encrypt"),
        "plaintext": b64(plaintext),
        "encryptionAlgorithm": "AES_GCM",
    }
    if aad is not None:
        body["additionalAuthenticatedData"] = b64(aad)
    if cdiv:
        body["ciphertextDataIntegrityValueAlgorithm"] = "SHA_256"
    return body


def decrypt_body(encrypted: dict[str, Any], aad: bytes | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "requestMetadata": crypto_metadata("Decrypt"),
        "ciphertext": encrypted["ciphertext"],
        "encryptionAlgorithm": "AES_GCM",
        "initializationVector": encrypted["initializationVector"],
        "authenticationTag": encrypted["authenticationTag"],
    }
    if "ciphertextMetadata" in encrypted:
        body["ciphertextMetadata"] = encrypted["ciphertextMetadata"]
    if aad is not None:
        body["additionalAuthenticatedData"] = b64(aad)
    return body


HEALTH_BODY = {"requestMetadata": {"kmsRequestId": "h-1", "kmsOperation": "KmsHealthCheck"}}
METADATA_BODY = {
    "requestMetadata": {
        "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
        "kmsOperation": "CreateKey",
        "kmsRequestId": "m-1",
    }
}


class XksClient:
    def __init__(
        self,
        client: TestClient[Any, Any],
        uri_path: str,
        region: str,
        credential: sigv4.Credential,
    ) -> None:
        self.client = client
        self.uri_path = uri_path
        self.region = region
        self.credential = credential

    @property
    def host(self) -> str:
        return f"{self.client.host}:{self.client.port}"

    def path(self, operation: str, key_id: str | None = None) -> str:
        if key_id is None:
            return f"{self.uri_path}/{operation}"
        return f"{self.uri_path}/keys/{key_id}/{operation}"

    def signed_headers(
        self,
        path: str,
        body: bytes,
        *,
        credential: sigv4.Credential | None = None,
        region: str | None = None,
        now: datetime | None = None,
    ) -> dict[str, str]:
        return sigv4.sign(
            method="POST",
            path=path,
            headers={"Host": self.host, "Content-Type": "application/json"},
            body=body,
            credential=credential or self.credential,
            region=region or self.region,
            now=now or datetime.now(UTC),
        )

    async def post_raw(self, path: str, body: bytes, **sign_options: Any) -> ClientResponse:
        headers = self.signed_headers(path, body, **sign_options)
        return await self.client.post(path, data=body, headers=headers)

    async def post(
        self, operation: str, key_id: str | None, document: Any, **sign_options: Any
    ) -> ClientResponse:
        body = json.dumps(document).encode()
        return await self.post_raw(self.path(operation, key_id), body, **sign_options)

    async def call(
        self, operation: str, key_id: str | None, document: Any, expect: int = 200
    ) -> dict[str, Any]:
        response = await self.post(operation, key_id, document)
        payload: dict[str, Any] = json.loads(await response.read())
        assert response.status == expect, payload
        return payload
