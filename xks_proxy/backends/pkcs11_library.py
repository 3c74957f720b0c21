"""Loading a PKCS#11 module safely for threads, and AES-GCM parameters built by hand.

Thread safety. python-pkcs11 (0.10) calls ``C_Initialize(NULL)``. A NULL argument tells the
module that the application will not call it from several threads at once, so SoftHSM 2.6.1
then runs without locks, and concurrent sessions corrupt its memory (seen here: "free(): invalid
pointer" and silent crashes in 3 of 3 runs of 16 threads, ``tools/pkcs11_os_locking.py``).
Right after python-pkcs11 has loaded the module and before any session exists, ``load`` calls
``C_Finalize`` and ``C_Initialize`` again through ctypes on the same module (``dlopen`` returns
the same instance), this time with ``CKF_OS_LOCKING_OK``, so the module uses OS locks.

GCM parameters. python-pkcs11's ``GCMParams`` caps the IV at 12 bytes and copies it, so it can
neither decrypt with the 16-byte IVs the XKS spec allows (§5.1) nor hand back an IV the token
wrote. Its raw-bytes escape hatch takes a ready ``CK_GCM_PARAMS`` instead: ``GcmParams`` builds
one whose IV buffer the caller owns and can read after the call.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pkcs11

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Library

CKF_OS_LOCKING_OK = 0x00000002
CKR_OK = 0
CKR_CRYPTOKI_NOT_INITIALIZED = 0x190


class _InitializeArgs(ctypes.Structure):
    _fields_ = (
        ("CreateMutex", ctypes.c_void_p),
        ("DestroyMutex", ctypes.c_void_p),
        ("LockMutex", ctypes.c_void_p),
        ("UnlockMutex", ctypes.c_void_p),
        ("flags", ctypes.c_ulong),
        ("pReserved", ctypes.c_void_p),
    )


class _GcmParams(ctypes.Structure):
    # PKCS#11 v2.40 CK_GCM_PARAMS.
    _fields_ = (
        ("pIv", ctypes.c_void_p),
        ("ulIvLen", ctypes.c_ulong),
        ("ulIvBits", ctypes.c_ulong),
        ("pAAD", ctypes.c_void_p),
        ("ulAADLen", ctypes.c_ulong),
        ("ulTagBits", ctypes.c_ulong),
    )


@dataclass
class GcmParams:
    """A CK_GCM_PARAMS for one call; keep this object alive until the call returns."""

    iv: bytes
    aad: bytes
    tag_bits: int = 128
    _iv_buffer: ctypes.Array[ctypes.c_char] = field(init=False, repr=False)
    _aad_buffer: ctypes.Array[ctypes.c_char] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._iv_buffer = ctypes.create_string_buffer(self.iv, len(self.iv))
        self._aad_buffer = ctypes.create_string_buffer(self.aad, max(1, len(self.aad)))

    def raw(self) -> bytes:
        return bytes(
            _GcmParams(
                ctypes.cast(self._iv_buffer, ctypes.c_void_p),
                len(self.iv),
                len(self.iv) * 8,
                ctypes.cast(self._aad_buffer, ctypes.c_void_p) if self.aad else None,
                len(self.aad),
                self.tag_bits,
            )
        )

    def iv_after_call(self) -> bytes:
        """The IV buffer as the token left it (tokens that generate IVs write it here)."""
        return self._iv_buffer.raw[: len(self.iv)]


class Pkcs11LibraryError(Exception):
    pass


_lock = threading.Lock()
_libraries: dict[Path, Library] = {}


def _reinitialize_with_os_locking(module: Path) -> None:
    native = ctypes.CDLL(str(module))
    finalized = native.C_Finalize(None)
    if finalized not in (CKR_OK, CKR_CRYPTOKI_NOT_INITIALIZED):
        raise Pkcs11LibraryError(f"C_Finalize failed with {finalized:#x}")
    arguments = _InitializeArgs(None, None, None, None, CKF_OS_LOCKING_OK, None)
    initialized = native.C_Initialize(ctypes.byref(arguments))
    if initialized != CKR_OK:
        raise Pkcs11LibraryError(f"C_Initialize with OS locking failed with {initialized:#x}")


def load(module: Path) -> Library:
    """The process's one handle on a module, initialised for concurrent use."""
    module = module.resolve()
    with _lock:
        library = _libraries.get(module)
        if library is None:
            library = pkcs11.lib(str(module))
            _reinitialize_with_os_locking(module)
            _libraries[module] = library
        return library


def reinitialize(module: Path) -> Library:
    """Finalize and initialise again: every session ends, and the module rescans its tokens.

    The caller must make sure no other thread is inside the module meanwhile.
    """
    library = load(module)
    with _lock:
        _reinitialize_with_os_locking(module.resolve())
    return library
