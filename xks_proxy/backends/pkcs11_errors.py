"""The one table from PKCS#11 failures to XKS errors (xks-spec §7.4, sample proxy's mapping).

Messages are fixed strings: no PKCS#11 return code or module text reaches the client.
Decrypt failures that mean "this ciphertext does not authenticate" differ by vendor: SoftHSM
2.6.1 reports a bad tag as CKR_GENERAL_ERROR, nShield as CKR_FUNCTION_FAILED, others as
CKR_ENCRYPTED_DATA_INVALID or _LEN_RANGE; all are InvalidCiphertextException on decrypt only.
"""

from __future__ import annotations

import re

from pkcs11 import exceptions as p11

from xks_proxy.errors import (
    InternalError,
    InvalidCiphertextError,
    InvalidKeyUsageError,
    KeyNotFoundError,
    XksError,
)

# python-pkcs11 has no class for it and reports "Unmapped error code 0x68".
CKR_KEY_FUNCTION_NOT_PERMITTED = 0x68
_UNMAPPED = re.compile(r"Unmapped error code (0x[0-9a-fA-F]+)")


class TokenLostError(Exception):
    """A lookup found no object, and neither did the lookup of the health key that every token
    of the backend holds: the token, not the key, is gone. (SoftHSM with its token directory
    moved away answers every lookup with "no such object", never with a device error.)"""


# The session or the device is gone: the session is discarded and opened again later.
SESSION_FAILURES: tuple[type[Exception], ...] = (
    TokenLostError,
    p11.DeviceError,
    p11.DeviceMemory,
    p11.DeviceRemoved,
    p11.TokenNotPresent,
    p11.TokenNotRecognised,
    p11.SessionHandleInvalid,
    p11.SessionClosed,
    p11.UserNotLoggedIn,
    p11.NoSuchToken,
)
# The key object behind a cached handle is gone or was replaced: look it up again.
STALE_HANDLE: tuple[type[Exception], ...] = (p11.ObjectHandleInvalid, p11.KeyHandleInvalid)
_BAD_CIPHERTEXT: tuple[type[Exception], ...] = (
    p11.EncryptedDataInvalid,
    p11.EncryptedDataLenRange,
    p11.GeneralError,
    p11.FunctionFailed,
    p11.DataLenRange,
    p11.MechanismParamInvalid,
)


def return_code(error: Exception) -> int | None:
    match = _UNMAPPED.search(str(error))
    return int(match.group(1), 16) if match else None


def translate(error: Exception, *, decrypting: bool) -> XksError:
    """The XKS error for a failure inside a PKCS#11 call."""
    if isinstance(error, XksError):
        return error
    if isinstance(error, p11.NoSuchKey):
        return KeyNotFoundError()
    if isinstance(error, p11.MultipleObjectsReturned):
        return InternalError("The key id names more than one HSM object.")
    if return_code(error) == CKR_KEY_FUNCTION_NOT_PERMITTED or isinstance(
        error, p11.KeyTypeInconsistent | p11.MechanismInvalid
    ):
        return InvalidKeyUsageError("The HSM does not permit this operation with this key.")
    if decrypting and isinstance(error, _BAD_CIPHERTEXT):
        return InvalidCiphertextError()
    # Everything else, SESSION_FAILURES among them, is the device's failure: retryable.
    return InternalError("The HSM operation failed.")
