"""AES-GCM through direct calls into the module (xks_proxy/backends/pkcs11_direct.py), on the
session's real SoftHSM2 token: the same bytes as python-pkcs11's calls, a second call when the
module asks for more room, failures by their code, and a key destroyed on the token stops
working on both call paths."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pkcs11 import Mechanism, ObjectClass

from tests.conftest import CONFORMANCE_TOKEN, KEY_BOTH
from tests.softhsm import SoftHsm
from xks_proxy.backends import pkcs11_direct, pkcs11_library
from xks_proxy.backends.pkcs11 import Pkcs11Backend
from xks_proxy.backends.pkcs11_direct import AesGcm, DirectCallFailed
from xks_proxy.backends.pkcs11_library import GcmParams
from xks_proxy.backends.pkcs11_tokens import find_token
from xks_proxy.errors import KeyNotFoundError
from xks_proxy.pkcs11_admin import create_key

AAD = b"direct-call aad"


@pytest.fixture
async def session_key(softhsm: SoftHsm) -> AsyncIterator[tuple[Any, AesGcm]]:
    """KEY_BOTH in a session of a running backend (which holds the token's login)."""
    backend = Pkcs11Backend(softhsm.backend_config(CONFORMANCE_TOKEN, calls_on_event_loop=True))
    await backend.open()
    pooled = await backend.hold_session()
    try:
        backend._ensure(backend._tokens[0], pooled)
        key = pooled.session.get_key(object_class=ObjectClass.SECRET_KEY, label=KEY_BOTH)
        yield key, AesGcm(softhsm.module)
    finally:
        backend.release_session(pooled)
        await backend.close()


def _library_call(key: Any, name: str, data: bytes, params: GcmParams) -> bytes:
    result: bytes = getattr(key, name)(data, mechanism=Mechanism.AES_GCM,
                                       mechanism_param=params.raw())  # fmt: skip
    return result


@pytest.mark.parametrize("size", [1, 4096])
@pytest.mark.parametrize("iv_bytes", [12, 16])
async def test_direct_calls_and_python_pkcs11_make_and_read_the_same_bytes(
    session_key: tuple[Any, AesGcm], size: int, iv_bytes: int
) -> None:
    key, direct = session_key
    plaintext, iv = os.urandom(size), os.urandom(iv_bytes)
    sealed = direct.encrypt(key, GcmParams(iv, AAD), plaintext)
    assert sealed == _library_call(key, "encrypt", plaintext, GcmParams(iv, AAD))
    assert len(sealed) == size + pkcs11_direct.TAG_BYTES
    assert direct.decrypt(key, GcmParams(iv, AAD), sealed) == plaintext
    assert _library_call(key, "decrypt", sealed, GcmParams(iv, AAD)) == plaintext


async def test_a_module_asking_for_more_room_gets_a_second_call(
    session_key: tuple[Any, AesGcm],
) -> None:
    """Too small a buffer is CKR_BUFFER_TOO_SMALL with the operation still active (PKCS#11
    §5.2): the call is made again with the length the module asked for."""
    key, direct = session_key
    plaintext, iv = os.urandom(100), os.urandom(12)
    sealed = pkcs11_direct._run(direct._encrypt_init, direct._encrypt, key, GcmParams(iv, AAD),
                                plaintext, room=10)  # fmt: skip
    assert sealed == direct.encrypt(key, GcmParams(iv, AAD), plaintext)
    opened = pkcs11_direct._run(direct._decrypt_init, direct._decrypt, key, GcmParams(iv, AAD),
                                sealed, room=0)  # fmt: skip
    assert opened == plaintext


async def test_a_failed_direct_call_carries_its_code_and_ends_the_operation(
    session_key: tuple[Any, AesGcm],
) -> None:
    key, direct = session_key
    iv = os.urandom(12)
    sealed = direct.encrypt(key, GcmParams(iv, AAD), b"authentic")
    forged = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(DirectCallFailed) as failed:
        direct.decrypt(key, GcmParams(iv, AAD), forged)
    assert failed.value.code != pkcs11_direct.CKR_OK
    # The session is free again: the next operation in it starts and succeeds.
    assert direct.decrypt(key, GcmParams(iv, AAD), sealed) == b"authentic"


@pytest.mark.parametrize("on_loop", [False, True], ids=["call-threads", "on-event-loop"])
async def test_a_key_destroyed_on_the_token_stops_working(softhsm: SoftHsm, on_loop: bool) -> None:
    """The backend caches key handles per session; a key destroyed on the token must answer
    KeyNotFoundException from the next request on, not go on working through its handle."""
    config = softhsm.backend_config(CONFORMANCE_TOKEN, sessions=1, calls_on_event_loop=on_loop)
    key_id = f"key-direct-{secrets.token_hex(4)}"
    create_key(config, config.tokens[0], key_id, frozenset({"ENCRYPT", "DECRYPT"}))
    backend = Pkcs11Backend(config)
    await backend.open()
    try:
        sealed = await backend.encrypt(key_id, b"before", AAD)
        assert await backend.decrypt(key_id, sealed, AAD) == b"before"  # the handle is cached
        session = find_token(pkcs11_library.load(softhsm.module), config.tokens[0]).open(rw=True)
        try:
            session.get_key(object_class=ObjectClass.SECRET_KEY, label=key_id).destroy()
        finally:
            session.close()
        with pytest.raises(KeyNotFoundError):
            await backend.encrypt(key_id, b"after", AAD)
        with pytest.raises(KeyNotFoundError):
            await backend.decrypt(key_id, sealed, AAD)
    finally:
        await backend.close()
