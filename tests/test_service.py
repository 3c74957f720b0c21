"""XksService over the fake backend: the paths no real backend takes on demand (a corrupted
encryption result, a failing verifying decrypt, a backend that raises something unexpected)."""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import pytest

from xks_proxy.aad import cdiv
from xks_proxy.backends.base import DECRYPT, ENCRYPT
from xks_proxy.backends.fake import FakeBackend, FakeCall
from xks_proxy.config import HealthConfig, KeyStoreConfig, load_config
from xks_proxy.errors import (
    ConfigError,
    DependencyTimeoutError,
    InternalError,
    InvalidCiphertextError,
    InvalidKeyUsageError,
    KeyNotFoundError,
    XksError,
)
from xks_proxy.health import HealthMonitor
from xks_proxy.metrics import ProxyMetrics
from xks_proxy.model import (
    DecryptRequest,
    EncryptRequest,
    HealthRequest,
    KeyMetadataRequest,
    RequestMetadata,
)
from xks_proxy.scaffold import scaffold
from xks_proxy.service import KeyStore, XksService

KEY = "key-both"
PLAINTEXT = b"the data key KMS wraps"
AAD = b"kms header"
SECRET_DETAIL = "PIN 7391 and plaintext dGhlIGRhdGE="


class Harness:
    """A service and key store over one fake backend."""

    def __init__(self) -> None:
        self.backend = FakeBackend()
        self.backend.add_key(KEY)
        self.backend.add_key("key-encrypt-only", frozenset({ENCRYPT}))
        self.backend.add_key("key-no-usage", frozenset())
        self.metrics = ProxyMetrics()
        health = HealthMonitor({self.backend.name: self.backend}, 15, self.metrics)
        self.service = XksService(health, HealthConfig(), self.metrics)
        self.store = KeyStore.build(
            KeyStoreConfig(
                name="store",
                uri_path="/kms/xks/v1",
                region="us-east-1",
                backend=self.backend.name,
                key_patterns=("key-*",),
                credentials=(),
            ),
            self.backend,
        )

    async def encrypt(
        self, key_id: str = KEY, *, aad: bytes | None = AAD, want_cdiv: bool = True
    ) -> dict[str, Any]:
        request = EncryptRequest(RequestMetadata("r-1", "Encrypt"), PLAINTEXT, aad, want_cdiv)
        return await self.service.encrypt(self.store, key_id, request)

    async def decrypt(self, encrypted: dict[str, Any], aad: bytes | None = AAD) -> bytes:
        request = DecryptRequest(
            metadata=RequestMetadata("r-2", "Decrypt"),
            ciphertext=_unb64(encrypted["ciphertext"]),
            ciphertext_metadata=_unb64(encrypted["ciphertextMetadata"]),
            aad=aad,
            iv=_unb64(encrypted["initializationVector"]),
            tag=_unb64(encrypted["authenticationTag"]),
        )
        answer = await self.service.decrypt(self.store, KEY, request)
        return _unb64(answer["plaintext"])

    def backend_outcomes(self, call: str, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "xks_backend_call_duration_seconds_count",
            {"backend": self.backend.name, "call": call, "outcome": outcome},
        )
        return value or 0.0


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _expected_cdiv(encrypted: dict[str, Any], aad: bytes | None) -> bytes:
    return cdiv(
        aad,
        _unb64(encrypted["ciphertextMetadata"]),
        _unb64(encrypted["initializationVector"]),
        _unb64(encrypted["ciphertext"]),
        _unb64(encrypted["authenticationTag"]),
    )


@pytest.fixture
def harness() -> Harness:
    return Harness()


async def test_cdiv_result_is_verified_by_a_decrypt(harness: Harness) -> None:
    encrypted = await harness.encrypt()
    assert harness.backend.calls == ["describe_key", "encrypt", "decrypt"]
    assert _unb64(encrypted["ciphertextDataIntegrityValue"]) == _expected_cdiv(encrypted, AAD)
    assert await harness.decrypt(encrypted) == PLAINTEXT


async def test_without_cdiv_there_is_no_verifying_decrypt(harness: Harness) -> None:
    encrypted = await harness.encrypt(want_cdiv=False)
    assert harness.backend.calls == ["describe_key", "encrypt"]
    assert "ciphertextDataIntegrityValue" not in encrypted


async def test_a_corrupted_result_is_detected_and_retried(harness: Harness) -> None:
    harness.backend.corrupt_next_encrypt()
    encrypted = await harness.encrypt()
    assert harness.backend.calls == ["describe_key", "encrypt", "decrypt", "encrypt", "decrypt"]
    # The answer is the second, good result, and its CDIV is computed over it.
    assert _unb64(encrypted["ciphertextDataIntegrityValue"]) == _expected_cdiv(encrypted, AAD)
    assert await harness.decrypt(encrypted) == PLAINTEXT
    assert harness.backend_outcomes("verify_decrypt", "InvalidCiphertextException") == 1


async def test_two_corrupted_results_are_an_internal_error(harness: Harness) -> None:
    harness.backend.corrupt_next_encrypt(times=2)
    with pytest.raises(InternalError) as raised:
        await harness.encrypt()
    assert raised.value.retryable
    assert harness.backend.calls.count("encrypt") == 2
    # A third encryption would have been good: the limit, not luck, ended the attempts.
    assert (await harness.encrypt())["ciphertext"]


@pytest.mark.parametrize(
    ("error", "answered"),
    [
        (InternalError(), InternalError),
        (DependencyTimeoutError(), DependencyTimeoutError),
        (KeyNotFoundError(), KeyNotFoundError),
        (RuntimeError(SECRET_DETAIL), InternalError),
    ],
    ids=["internal", "timeout", "key gone", "not an XKS error"],
)
async def test_a_failing_verifying_decrypt_is_never_an_unverified_cdiv(
    harness: Harness, error: Exception, answered: type[XksError]
) -> None:
    harness.backend.fail_next("decrypt", error)
    with pytest.raises(answered):
        await harness.encrypt()
    assert harness.backend.calls == ["describe_key", "encrypt", "decrypt"]


async def test_a_verifying_decrypt_that_rejects_the_ciphertext_is_retried(
    harness: Harness,
) -> None:
    harness.backend.fail_next("decrypt", InvalidCiphertextError())
    encrypted = await harness.encrypt()
    assert harness.backend.calls.count("encrypt") == 2
    assert await harness.decrypt(encrypted) == PLAINTEXT


@pytest.mark.parametrize("aad", [None, AAD], ids=["no-aad", "aad"])
@pytest.mark.parametrize("key_id", ["key-encrypt-only", "key-no-usage"])
async def test_cdiv_needs_decrypt_usage(harness: Harness, key_id: str, aad: bytes | None) -> None:
    with pytest.raises(InvalidKeyUsageError):
        await harness.encrypt(key_id, aad=aad)
    assert harness.backend.calls == ["describe_key"], "nothing was encrypted"


async def test_encrypt_only_key_encrypts_without_cdiv(harness: Harness) -> None:
    encrypted = await harness.encrypt("key-encrypt-only", want_cdiv=False)
    assert harness.backend.calls == ["describe_key", "encrypt"]
    assert encrypted["ciphertext"]


@pytest.mark.parametrize("call", ["describe_key", "encrypt", "decrypt"])
async def test_a_non_xks_exception_becomes_an_opaque_internal_error(
    harness: Harness, call: FakeCall, caplog: pytest.LogCaptureFixture
) -> None:
    encrypted = await harness.encrypt(want_cdiv=False)
    harness.backend.fail_next(call, ValueError(SECRET_DETAIL))
    with caplog.at_level(logging.DEBUG), pytest.raises(InternalError) as raised:
        if call == "decrypt":
            await harness.decrypt(encrypted)
        else:
            await harness.encrypt(want_cdiv=False)
    assert raised.value.message == InternalError.default_message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert "ValueError" in caplog.text, "the log says what kind of failure it was"
    assert "7391" not in caplog.text and "dGhlIGRhdGE=" not in caplog.text
    assert harness.backend_outcomes(call, "InternalException") == 1


async def test_metadata_reports_the_backend_description(harness: Harness) -> None:
    request = KeyMetadataRequest(RequestMetadata("r-3", "DescribeKey"))
    metadata = await harness.service.get_key_metadata(harness.store, "key-encrypt-only", request)
    assert metadata == {"keySpec": "AES_256", "keyUsage": ["ENCRYPT"], "keyStatus": "ENABLED"}
    assert DECRYPT not in metadata["keyUsage"]


def test_the_fake_backend_cannot_be_configured(tmp_path: Path) -> None:
    made = scaffold(tmp_path, key_id=KEY, port=0, metrics_port=0, admin_port=0)
    text = made.config_path.read_text()
    made.config_path.write_text(text.replace('type = "software"', 'type = "fake"'))
    with pytest.raises(ConfigError, match="type"):
        load_config(made.config_path)


async def test_a_failing_health_check_reports_unavailable(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    monitor = HealthMonitor({harness.backend.name: harness.backend}, 15, harness.metrics)
    service = XksService(monitor, HealthConfig(), harness.metrics)
    request = HealthRequest(RequestMetadata("h-1", "KmsHealthCheck"))

    def state() -> str:
        details = service.health(harness.store, request)["ekmFleetDetails"]
        return str(details[0]["healthStatus"])

    harness.backend.fail_next("check_health", RuntimeError(SECRET_DETAIL))
    with caplog.at_level(logging.DEBUG):
        await monitor.check_all()
    assert state() == "UNAVAILABLE"
    assert "RuntimeError" in caplog.text
    assert "7391" not in caplog.text and "dGhlIGRhdGE=" not in caplog.text
    await monitor.check_all()
    assert state() == "ACTIVE"
