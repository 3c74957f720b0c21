"""Cached key handles (xks_proxy/backends/pkcs11_keys.py) on the session's real SoftHSM2 token:
a key destroyed on the token stops working from the next request on, on both call paths."""

from __future__ import annotations

import secrets

import pytest
from pkcs11 import ObjectClass

from tests.conftest import CONFORMANCE_TOKEN
from tests.softhsm import SoftHsm
from xks_proxy.backends import pkcs11_library
from xks_proxy.backends.pkcs11 import Pkcs11Backend
from xks_proxy.backends.pkcs11_tokens import find_token
from xks_proxy.errors import KeyNotFoundError
from xks_proxy.pkcs11_admin import create_key

AAD = b"handle aad"


@pytest.mark.parametrize("on_loop", [False, True], ids=["call-threads", "on-event-loop"])
async def test_a_key_destroyed_on_the_token_stops_working(softhsm: SoftHsm, on_loop: bool) -> None:
    """The backend caches key handles per session; a key destroyed on the token must answer
    KeyNotFoundException from the next request on, not go on working through its handle."""
    config = softhsm.backend_config(CONFORMANCE_TOKEN, sessions=1, calls_on_event_loop=on_loop)
    key_id = f"key-handle-{secrets.token_hex(4)}"
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
