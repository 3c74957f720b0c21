"""The XKS error hierarchy: one class per errorName of the spec's error table (xks-spec §7.2).

Each class carries its ``errorName`` and HTTP status; one middleware renders them. Messages are
fixed, generic strings chosen by the raiser: they must never contain plaintext, key material,
secrets, or native (PKCS#11, OpenSSL) details.
"""

from __future__ import annotations

import re
from typing import ClassVar

_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
# XKS spec §7.1: errorMessage is printable ASCII and fewer than 512 characters.
MAX_ERROR_MESSAGE = 511


def sanitize_message(message: str) -> str:
    """Make a message fit the spec's errorMessage rules (printable ASCII, < 512 chars)."""
    return _UNPRINTABLE.sub("?", message)[:MAX_ERROR_MESSAGE]


class XksError(Exception):
    """Base of every error the proxy answers with."""

    error_name: ClassVar[str] = "InternalException"
    http_status: ClassVar[int] = 500
    # XKS spec §7.3: KMS treats only these as retryable (they lower its "reliability" graph).
    retryable: ClassVar[bool] = False
    default_message: ClassVar[str] = "The request failed."
    # For the audit line only, never the answer: the policies behind a denial (authz/).
    audit_policies: tuple[str, ...] = ()

    def __init__(self, message: str | None = None) -> None:
        self.message = sanitize_message(message or self.default_message)
        super().__init__(self.message)


class ValidationError(XksError):
    error_name = "ValidationException"
    http_status = 400
    default_message = "One or more request parameters are invalid."


class InvalidStateError(XksError):
    error_name = "InvalidStateException"
    http_status = 400
    default_message = "The external key or key store is disabled."


class InvalidCiphertextError(XksError):
    error_name = "InvalidCiphertextException"
    http_status = 400
    default_message = (
        "The ciphertext, additional authenticated data, initialization vector, authentication tag "
        "or ciphertext metadata is corrupted, missing, or otherwise invalid."
    )


class InvalidKeyUsageError(XksError):
    error_name = "InvalidKeyUsageException"
    http_status = 400
    default_message = "The external key does not support the requested operation."


class AuthenticationFailedError(XksError):
    error_name = "AuthenticationFailedException"
    http_status = 401
    default_message = "The request signature could not be verified."


class AccessDeniedError(XksError):
    error_name = "AccessDeniedException"
    http_status = 403
    default_message = "The request was denied by the proxy's authorization policy."


class KeyNotFoundError(XksError):
    error_name = "KeyNotFoundException"
    http_status = 404
    default_message = "The external key was not found."


class InvalidUriPathError(XksError):
    error_name = "InvalidUriPathException"
    http_status = 404
    default_message = "The URI path is not a valid XKS proxy API path."


class ThrottlingError(XksError):
    error_name = "ThrottlingException"
    http_status = 429
    retryable = True
    default_message = "The request rate is too high."


class UnsupportedOperationError(XksError):
    error_name = "UnsupportedOperationException"
    http_status = 501
    default_message = "The operation or parameter size is not supported by this proxy."


class DependencyTimeoutError(XksError):
    error_name = "DependencyTimeoutException"
    http_status = 503
    retryable = True
    default_message = "The external key manager did not answer in time."


class InternalError(XksError):
    error_name = "InternalException"
    http_status = 500
    retryable = True
    default_message = "The proxy or the external key manager failed."


class ConfigError(Exception):
    """A configuration problem, raised before the proxy opens its port; names the bad key."""


class CommandError(Exception):
    """A CLI command that cannot do what was asked (unknown key, last credential…); exit 1."""
