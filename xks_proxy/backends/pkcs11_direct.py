"""AES-GCM in one PKCS#11 session with two calls into the module and no size query.

python-pkcs11 (0.10) makes three calls per single-part encrypt or decrypt: ``C_*Init``, then
``C_Encrypt``/``C_Decrypt`` once with no output buffer to learn the output length, then again
for the data. Each call releases the GIL, and its Cython wrapper takes the GIL once more right
after the call to look for a Python error (its function-pointer types are not ``noexcept``),
before retaking it at the end of the ``nogil`` block. On a call thread that is seven GIL
acquisitions per operation, each a hand-off with a busy event loop (a context switch when both
share a core). Here ``C_*Init`` and one ``C_Encrypt``/``C_Decrypt`` go through ctypes, which
releases the GIL for each call and retakes it once: three acquisitions with the thread's
wake-up. The output length of AES-GCM is known (plaintext + tag; a plaintext is never longer
than the ciphertext with its tag), and a module that asks for more (CKR_BUFFER_TOO_SMALL, which
leaves the operation active) gets it on a second call.

The functions come from the module's own ``C_GetFunctionList``, the same table python-pkcs11
uses, and the session and key handles from python-pkcs11's objects, so sessions, logins, key
lookups and every other call stay with python-pkcs11. A call that fails raises
``DirectCallFailed``; the caller runs the operation once more through python-pkcs11, which
raises its own typed exception for the code (the one error table, ``pkcs11_errors``, reads
those), or succeeds if the failure was transient.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from pkcs11 import Mechanism

from xks_proxy.backends.pkcs11_library import GcmParams

CKR_OK = 0
CKR_BUFFER_TOO_SMALL = 0x150
CKM_AES_GCM = 0x1087
TAG_BYTES = 16

# CK_FUNCTION_LIST (PKCS#11 v2.40 §5.16) up to C_Decrypt, in the standard's order.
_FUNCTIONS = (
    "C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList", "C_GetSlotList",
    "C_GetSlotInfo", "C_GetTokenInfo", "C_GetMechanismList", "C_GetMechanismInfo",
    "C_InitToken", "C_InitPIN", "C_SetPIN", "C_OpenSession", "C_CloseSession",
    "C_CloseAllSessions", "C_GetSessionInfo", "C_GetOperationState", "C_SetOperationState",
    "C_Login", "C_Logout", "C_CreateObject", "C_CopyObject", "C_DestroyObject",
    "C_GetObjectSize", "C_GetAttributeValue", "C_SetAttributeValue", "C_FindObjectsInit",
    "C_FindObjects", "C_FindObjectsFinal", "C_EncryptInit", "C_Encrypt", "C_EncryptUpdate",
    "C_EncryptFinal", "C_DecryptInit", "C_Decrypt",
)  # fmt: skip


class _FunctionList(ctypes.Structure):
    _fields_ = [("version", ctypes.c_ubyte * 2)] + [(name, ctypes.c_void_p) for name in _FUNCTIONS]


class _Mechanism(ctypes.Structure):
    _fields_ = (
        ("mechanism", ctypes.c_ulong),
        ("pParameter", ctypes.c_void_p),
        ("ulParameterLen", ctypes.c_ulong),
    )


# CFUNCTYPE, not PYFUNCTYPE: ctypes releases the GIL for the call (a network HSM may block).
_Init = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_ulong, ctypes.POINTER(_Mechanism),
                         ctypes.c_ulong)  # fmt: skip
_Crypt = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong,
                          ctypes.c_void_p, ctypes.POINTER(ctypes.c_ulong))  # fmt: skip


class DirectCallFailed(Exception):
    """A direct call returned ``code``; python-pkcs11 names the failure on a second try."""

    def __init__(self, code: int) -> None:
        super().__init__(f"PKCS#11 call failed with {code:#x}")
        self.code = code


class AesGcm:
    """C_EncryptInit/C_Encrypt and C_DecryptInit/C_Decrypt of one module, called directly."""

    def __init__(self, module: Path) -> None:
        get_function_list = ctypes.CDLL(str(module.resolve())).C_GetFunctionList
        get_function_list.argtypes = (ctypes.POINTER(ctypes.POINTER(_FunctionList)),)
        get_function_list.restype = ctypes.c_ulong
        table = ctypes.POINTER(_FunctionList)()
        code = get_function_list(ctypes.byref(table))
        if code != CKR_OK or not table:
            raise DirectCallFailed(code)
        functions = table.contents
        self._encrypt_init = _Init(functions.C_EncryptInit)
        self._encrypt = _Crypt(functions.C_Encrypt)
        self._decrypt_init = _Init(functions.C_DecryptInit)
        self._decrypt = _Crypt(functions.C_Decrypt)

    def encrypt(self, key: Any, params: GcmParams, plaintext: bytes) -> bytes:
        """Ciphertext with the tag appended; ``key`` is python-pkcs11's key object."""
        return _run(self._encrypt_init, self._encrypt, key, params, plaintext,
                    len(plaintext) + TAG_BYTES)  # fmt: skip

    def decrypt(self, key: Any, params: GcmParams, sealed: bytes) -> bytes:
        """``sealed``: ciphertext with the tag appended."""
        return _run(self._decrypt_init, self._decrypt, key, params, sealed, len(sealed))


def aes_gcm(
    direct: AesGcm | None, key: Any, params: GcmParams, data: bytes, *, encrypting: bool
) -> bytes:
    """AES-GCM with ``key``: direct calls when ``direct`` is set and the key permits the
    operation; otherwise, and after a failed direct call, through python-pkcs11, whose typed
    exception (or AttributeError, for a key without the usage) names the failure."""
    name = "encrypt" if encrypting else "decrypt"
    if direct is not None and hasattr(key, name):
        try:
            return (direct.encrypt if encrypting else direct.decrypt)(key, params, data)
        except DirectCallFailed:
            pass
    result: bytes = getattr(key, name)(
        data, mechanism=Mechanism.AES_GCM, mechanism_param=params.raw()
    )
    return result


def _run(init: Any, crypt: Any, key: Any, params: GcmParams, data: bytes, room: int) -> bytes:
    session = key.session.handle
    structure = params.structure()
    mechanism = _Mechanism(CKM_AES_GCM, ctypes.addressof(structure), ctypes.sizeof(structure))
    code = init(session, ctypes.byref(mechanism), key.handle)
    if code != CKR_OK:
        raise DirectCallFailed(code)
    output = ctypes.create_string_buffer(max(room, 1))
    length = ctypes.c_ulong(room)
    code = crypt(session, data, len(data), output, ctypes.byref(length))
    if code == CKR_BUFFER_TOO_SMALL:  # the operation is still active (PKCS#11 §5.2)
        output = ctypes.create_string_buffer(length.value)
        code = crypt(session, data, len(data), output, ctypes.byref(length))
    if code != CKR_OK:
        raise DirectCallFailed(code)
    return output.raw[: length.value]
