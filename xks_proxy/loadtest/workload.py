"""What the load generator sends: signed XKS requests in a fixed operation mix.

Signatures are made with the shared ``sigv4`` module and reused within one second (the
``X-Amz-Date`` resolution; the body of each operation is fixed), so signing costs the
generator almost nothing at high rates while every request still carries a fresh date.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

from xks_proxy import sigv4

OPERATIONS = ("encrypt", "decrypt", "metadata", "health")
# Against the KMS emulator (AWS JSON 1.1), measuring the whole chain through the proxy.
KMS_OPERATIONS = ("encrypt", "decrypt", "generate-data-key")


def b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def parse_mix(text: str, allowed: tuple[str, ...] = OPERATIONS) -> list[tuple[str, int]]:
    """``encrypt=70,decrypt=20,metadata=5,health=5`` (weights; ``encrypt`` alone means 100 %)."""
    mix = []
    for part in text.split(","):
        name, _, weight = part.strip().partition("=")
        if name not in allowed:
            raise ValueError(f"unknown operation {name!r}; use {', '.join(allowed)}")
        value = int(weight) if weight else 1
        if value <= 0:
            raise ValueError(f"weight of {name} must be positive")
        mix.append((name, value))
    return mix


def schedule(mix: list[tuple[str, int]]) -> list[str]:
    """A fixed, interleaved cycle of operations with the mix's proportions."""
    total = sum(weight for _, weight in mix)
    slots: list[tuple[float, str]] = []
    for name, weight in mix:
        slots += [((i + 0.5) * total / weight, name) for i in range(weight)]
    return [name for _, name in sorted(slots)]


@dataclass(frozen=True)
class XksTarget:
    url: str  # scheme://host[:port]
    uri_path: str
    region: str
    credential: sigv4.Credential
    key_id: str

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc


class _SignatureCache:
    """Signed headers per operation, made again when the second (X-Amz-Date) changes."""

    def __init__(self) -> None:
        self._signed: dict[str, tuple[int, dict[str, str]]] = {}

    def get(self, operation: str, sign: Callable[[datetime], dict[str, str]]) -> dict[str, str]:
        second = int(time.time())
        cached = self._signed.get(operation)
        if cached is None or cached[0] != second:
            cached = (second, sign(datetime.fromtimestamp(second, UTC)))
            self._signed[operation] = cached
        return cached[1]


def _metadata(operation: str) -> dict[str, str]:
    metadata = {"kmsRequestId": "loadtest", "kmsOperation": operation}
    if operation != "KmsHealthCheck":
        metadata["awsPrincipalArn"] = "arn:aws:iam::111122223333:role/xks-loadtest"
    if operation in ("Encrypt", "Decrypt"):
        metadata["kmsKeyArn"] = "arn:aws:kms:us-east-1:111122223333:key/loadtest"
    return metadata


class XksWorkload:
    """Builds and signs the requests of each operation."""

    def __init__(self, target: XksTarget, plaintext_bytes: int, aad_bytes: int) -> None:
        self.target = target
        self._aad = os.urandom(aad_bytes) if aad_bytes else None
        self._bodies: dict[str, bytes] = {
            "encrypt": self._json(
                {
                    "requestMetadata": _metadata("Encrypt"),
                    "plaintext": b64(os.urandom(plaintext_bytes)),
                    "encryptionAlgorithm": "AES_GCM",
                    **({"additionalAuthenticatedData": b64(self._aad)} if self._aad else {}),
                }
            ),
            "metadata": self._json({"requestMetadata": _metadata("CreateKey")}),
            "health": self._json({"requestMetadata": _metadata("KmsHealthCheck")}),
        }
        self._signatures = _SignatureCache()

    @staticmethod
    def _json(document: dict[str, Any]) -> bytes:
        return json.dumps(document, separators=(",", ":")).encode()

    def path(self, operation: str) -> str:
        base = self.target.uri_path
        return (
            f"{base}/health"
            if operation == "health"
            else (f"{base}/keys/{self.target.key_id}/{operation}")
        )

    def needs_ciphertext(self) -> bool:
        return "decrypt" not in self._bodies

    def set_ciphertext(self, encrypted: dict[str, Any]) -> None:
        """Decrypt requests replay one real ciphertext made by the proxy under test."""
        document: dict[str, Any] = {
            "requestMetadata": _metadata("Decrypt"),
            "encryptionAlgorithm": "AES_GCM",
            **{k: encrypted[k] for k in ("ciphertext", "initializationVector",
                                         "authenticationTag") if k in encrypted},
        }  # fmt: skip
        if "ciphertextMetadata" in encrypted:
            document["ciphertextMetadata"] = encrypted["ciphertextMetadata"]
        if self._aad:
            document["additionalAuthenticatedData"] = b64(self._aad)
        self._bodies["decrypt"] = self._json(document)

    def request(self, operation: str) -> tuple[str, bytes, dict[str, str]]:
        """URL, body and signed headers for one request of ``operation``."""
        body = self._bodies[operation]
        headers = self._signatures.get(operation, lambda now: sigv4.sign(
            method="POST",
            path=self.path(operation),
            headers={"Host": self.target.host, "Content-Type": "application/json"},
            body=body,
            credential=self.target.credential,
            region=self.target.region,
            now=now,
        ))  # fmt: skip
        return self.target.url + self.path(operation), body, headers


@dataclass(frozen=True)
class KmsTarget:
    """The KMS emulator (or any AWS KMS endpoint that accepts these credentials)."""

    url: str
    key_id: str
    region: str
    credential: sigv4.Credential

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc


class KmsWorkload:
    """Encrypt, Decrypt and GenerateDataKey in the AWS JSON 1.1 protocol, signed for ``kms``."""

    _TARGETS: ClassVar[dict[str, str]] = {
        "encrypt": "TrentService.Encrypt",
        "decrypt": "TrentService.Decrypt",
        "generate-data-key": "TrentService.GenerateDataKey",
    }

    def __init__(self, target: KmsTarget, plaintext_bytes: int) -> None:
        self.target = target
        self._bodies: dict[str, bytes] = {
            "encrypt": json.dumps({"KeyId": target.key_id,
                                   "Plaintext": b64(os.urandom(plaintext_bytes))}).encode(),
            "generate-data-key": json.dumps({"KeyId": target.key_id,
                                             "KeySpec": "AES_256"}).encode(),
        }  # fmt: skip
        self._signatures = _SignatureCache()

    def set_ciphertext(self, encrypted: dict[str, Any]) -> None:
        self._bodies["decrypt"] = json.dumps(
            {"CiphertextBlob": encrypted["CiphertextBlob"]}
        ).encode()

    def request(self, operation: str) -> tuple[str, bytes, dict[str, str]]:
        body = self._bodies[operation]
        headers = self._signatures.get(operation, lambda now: sigv4.sign(
            method="POST",
            path="/",
            headers={
                "Host": self.target.host,
                "Content-Type": "application/x-amz-json-1.1",
                "X-Amz-Target": self._TARGETS[operation],
            },
            body=body,
            credential=self.target.credential,
            region=self.target.region,
            now=now,
            service="kms",
            signed_headers=("content-type", "host", "x-amz-date", "x-amz-target"),
        ))  # fmt: skip
        return self.target.url + "/", body, headers
