"""KMS exceptions, and how a failed proxy call surfaces in each kind of KMS operation.

The messages are the ones AWS KMS uses for external key stores (the "KMS Considerations" table
of the XKS proxy API spec, xks-spec §7.3): tools match on these strings.
"""

from __future__ import annotations

from enum import StrEnum


class KmsError(Exception):
    """Rendered as ``{"__type": code, "message": message}``, which botocore raises as
    ``ClientError`` with that code."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class ProxyFailure(StrEnum):
    """Why a call to the XKS proxy failed: an errorName it answered, or a transport failure."""

    VALIDATION = "ValidationException"
    INVALID_STATE = "InvalidStateException"
    INVALID_CIPHERTEXT = "InvalidCiphertextException"
    INVALID_KEY_USAGE = "InvalidKeyUsageException"
    AUTHENTICATION_FAILED = "AuthenticationFailedException"
    ACCESS_DENIED = "AccessDeniedException"
    KEY_NOT_FOUND = "KeyNotFoundException"
    INVALID_URI_PATH = "InvalidUriPathException"
    UNSUPPORTED_OPERATION = "UnsupportedOperationException"
    DEPENDENCY_TIMEOUT = "DependencyTimeoutException"
    THROTTLING = "ThrottlingException"
    INTERNAL = "InternalException"
    TCP = "tcp"
    TLS = "tls"
    TIMEOUT = "timeout"
    MALFORMED = "malformed"
    BAD_RESULT = "bad result"  # a 200 answer that is wrong (CDIV mismatch, bad ciphertext)
    ALL_UNAVAILABLE = "all EKMs unavailable"


_MALFORMED = (
    "AWS KMS cannot interpret the response from the external key store proxy. If you see this "
    "error repeatedly, report it to your external key store proxy administrator."
)
MESSAGES: dict[ProxyFailure, str] = {
    ProxyFailure.VALIDATION: _MALFORMED,
    ProxyFailure.MALFORMED: _MALFORMED,
    ProxyFailure.INVALID_STATE: (
        "The external key associated with this KMS key in an external key store is not enabled "
        "in the external key manager. Enable the external key in the external key manager and "
        "retry the request."
    ),
    ProxyFailure.INVALID_CIPHERTEXT: (
        "The external key store proxy rejected the request because the specified ciphertext or "
        "encryption context is corrupted, missing, or otherwise invalid."
    ),
    ProxyFailure.BAD_RESULT: (
        "The ciphertext that the external key store proxy submitted for decryption, or the "
        "encryption context, is corrupted, missing, or otherwise invalid."
    ),
    ProxyFailure.INVALID_KEY_USAGE: (
        "The external key associated with this KMS key in an external key store does not "
        "support the requested operation. Enable the operation on the key in your external key "
        "manager, and try the request again."
    ),
    ProxyFailure.AUTHENTICATION_FAILED: (
        "The external key store proxy rejected the request because it could not authenticate "
        "AWS KMS. Verify the XKS proxy authentication credentials for your external key store "
        "and update if necessary."
    ),
    ProxyFailure.ACCESS_DENIED: (
        "The external key store proxy denied access to the operation. Verify that the user and "
        "the external key are both authorized for this operation, and try the request again."
    ),
    ProxyFailure.KEY_NOT_FOUND: (
        "The external key associated with this KMS key in an external key store was not found "
        "in its external key manager. If the external key ID associated with this KMS key is "
        "incorrect, create a new KMS key with the correct external key ID."
    ),
    ProxyFailure.INVALID_URI_PATH: (
        "The external key store proxy rejected the request because of an invalid URI path. "
        "Verify the URI path for your external key store and update if necessary."
    ),
    ProxyFailure.UNSUPPORTED_OPERATION: (
        "The external key store proxy rejected the request because it does not support the "
        "requested operation. If you see this error repeatedly, report it to your external key "
        "store proxy administrator."
    ),
    ProxyFailure.DEPENDENCY_TIMEOUT: (
        "The external key store proxy did not respond to the request in the time allotted. "
        "Retry the request. If you see this error repeatedly, report it to your external key "
        "store proxy administrator."
    ),
    ProxyFailure.THROTTLING: (
        "The external key store proxy rejected the request due to a very high request rate. "
        "Reduce the frequency of your calls using KMS keys in this external key store."
    ),
    ProxyFailure.INTERNAL: (
        "The external key store proxy rejected the request because it cannot communicate with "
        "the external key manager. Verify that the external key store proxy configuration is "
        "correct and that the external key manager is available."
    ),
    ProxyFailure.TCP: (
        "AWS KMS cannot communicate with the external key store proxy. This might be a "
        "transient network issue. If you see this error repeatedly, verify that your external "
        "key store proxy is active and is connected to the network, and that its endpoint URI "
        "is correct in your external keystore."
    ),
    ProxyFailure.TLS: (
        "AWS KMS cannot establish a TLS connection to the external key store proxy. Verify the "
        "TLS configuration, including its certificate."
    ),
    ProxyFailure.TIMEOUT: (
        "AWS KMS rejected the request because the external key store proxy did not respond in "
        "time. Retry the request. If you see this error repeatedly, report it to your external "
        "key store proxy administrator."
    ),
    ProxyFailure.ALL_UNAVAILABLE: (
        "AWS KMS cannot communicate with the external key store proxy: every external key "
        "manager it reports is UNAVAILABLE."
    ),
}
NOT_CONNECTED = (
    "This KMS key is in a custom key store that is not connected to its external key store "
    "proxy. Connect the external key store and try the request again."
)

# xks-spec §7.3: the exception Create/UpdateCustomKeyStore raise for each failure.
_KEY_STORE_EXCEPTIONS = {
    ProxyFailure.AUTHENTICATION_FAILED: "XksProxyIncorrectAuthenticationCredentialException",
    ProxyFailure.INVALID_URI_PATH: "XksProxyInvalidConfigurationException",
    ProxyFailure.DEPENDENCY_TIMEOUT: "XksProxyUriUnreachableException",
    ProxyFailure.THROTTLING: "XksProxyUriUnreachableException",
    ProxyFailure.TCP: "XksProxyUriUnreachableException",
    ProxyFailure.TLS: "XksProxyUriUnreachableException",
    ProxyFailure.TIMEOUT: "XksProxyUriUnreachableException",
    ProxyFailure.ALL_UNAVAILABLE: "XksProxyUriUnreachableException",
}
# ... and CreateKey.
_CREATE_KEY_EXCEPTIONS = {
    ProxyFailure.INVALID_STATE: "XksKeyInvalidConfigurationException",
    ProxyFailure.INVALID_KEY_USAGE: "XksKeyInvalidConfigurationException",
    ProxyFailure.KEY_NOT_FOUND: "XksKeyNotFoundException",
    ProxyFailure.UNSUPPORTED_OPERATION: "XksKeyInvalidResponseException",
    ProxyFailure.ACCESS_DENIED: "KMSInvalidStateException",
}
# ... and ConnectCustomKeyStore, as the store's ConnectionErrorCode.
CONNECTION_ERROR_CODES = {
    ProxyFailure.AUTHENTICATION_FAILED: "INVALID_CREDENTIALS",
    ProxyFailure.INVALID_URI_PATH: "XKS_PROXY_INVALID_CONFIGURATION",
    ProxyFailure.ACCESS_DENIED: "XKS_PROXY_ACCESS_DENIED",
    ProxyFailure.TCP: "XKS_PROXY_NOT_REACHABLE",
    ProxyFailure.ALL_UNAVAILABLE: "XKS_PROXY_NOT_REACHABLE",
    ProxyFailure.TLS: "XKS_PROXY_INVALID_TLS_CONFIGURATION",
    ProxyFailure.TIMEOUT: "XKS_PROXY_TIMED_OUT",
    ProxyFailure.DEPENDENCY_TIMEOUT: "XKS_PROXY_TIMED_OUT",
    ProxyFailure.THROTTLING: "XKS_PROXY_NOT_REACHABLE",
    ProxyFailure.INTERNAL: "INTERNAL_ERROR",
}


class ProxyCallError(Exception):
    """A call to the proxy failed; ``failure`` says how (never the proxy's own message)."""

    def __init__(self, failure: ProxyFailure) -> None:
        super().__init__(failure.value)
        self.failure = failure


def for_key_store_operation(error: ProxyCallError) -> KmsError:
    code = _KEY_STORE_EXCEPTIONS.get(error.failure, "XksProxyInvalidResponseException")
    return KmsError(code, MESSAGES[error.failure])


def for_create_key(error: ProxyCallError) -> KmsError:
    code = _CREATE_KEY_EXCEPTIONS.get(error.failure, "CustomKeyStoreInvalidStateException")
    return KmsError(code, MESSAGES[error.failure])


def for_crypto(error: ProxyCallError) -> KmsError:
    # xks-spec §7.3: cryptographic operations always raise KMSInvalidStateException.
    return KmsError("KMSInvalidStateException", MESSAGES[error.failure])


def key_not_found(arn: str) -> KmsError:
    return KmsError("NotFoundException", f"Key '{arn}' does not exist")


def invalid_key_id(key_ref: str) -> KmsError:
    return KmsError("NotFoundException", f"Invalid keyId '{key_ref}'")


def alias_not_found(alias_arn: str) -> KmsError:
    return KmsError("NotFoundException", f"Alias {alias_arn} is not found.")


def key_store_not_found(store_id: str) -> KmsError:
    return KmsError(
        "CustomKeyStoreNotFoundException", f"Custom key store '{store_id}' does not exist."
    )


def validation(message: str) -> KmsError:
    return KmsError("ValidationException", message)


def constraint(value: str | None, member: str, rule: str) -> KmsError:
    """AWS's wording for one failed constraint; ``value`` None leaves it out (secrets)."""
    shown = f" '{value}'" if value is not None else ""
    return validation(
        f"1 validation error detected: Value{shown} at '{member}' failed to satisfy "
        f"constraint: Member must {rule}"
    )
