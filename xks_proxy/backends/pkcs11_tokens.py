"""One token of a PKCS#11 backend: its session pool, its login, and how it is found.

PKCS#11 login state belongs to the application, not to a session: each token keeps one session
that logs in and stays open, and a fixed pool of sessions opened without a PIN, which share that
login. ``find_token`` is shared with the provisioning commands (``pkcs11_admin``).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from xks_proxy.backends.pkcs11_keys import PooledSession
from xks_proxy.config import TokenSelector


def find_token(library: Any, selector: TokenSelector) -> Any:
    """The token ``selector`` names; raises ``p11.NoSuchToken``."""
    if selector.label is not None:
        return library.get_token(token_label=selector.label)
    assert selector.serial is not None
    return library.get_token(token_serial=selector.serial.encode())


class PooledToken:
    def __init__(self, selector: TokenSelector, size: int) -> None:
        self.selector = selector
        self.sessions = [PooledSession() for _ in range(size)]
        self.pool: asyncio.Queue[PooledSession] = asyncio.Queue()
        for each in self.sessions:
            self.pool.put_nowait(each)
        self.token: Any = None
        self.login: Any = None
        self.healthy = True
        self.model = "PKCS#11 token"
        self.manufacturer = ""
        self.connect_lock = threading.Lock()

    @property
    def ekm_id(self) -> str:
        return self.selector.label or self.selector.serial or "token"

    def ensure(self, pooled: PooledSession, library: Any, user_pin: str, model: str | None) -> Any:
        """The session, opening it (and logging in to the token) when needed; on a pool thread.
        ``model``: the configured model, else the token's own is reported."""
        if pooled.session is not None:
            return pooled.session
        with self.connect_lock:
            if self.login is None:
                found = find_token(library, self.selector)
                self.login = found.open(user_pin=user_pin)
                self.token = found
                self.manufacturer = found.manufacturer_id
                self.model = model or f"{found.manufacturer_id} {found.model}"
        pooled.session = self.token.open()
        pooled.keys.clear()
        return pooled.session

    def forget(self) -> None:
        """Drop every session and the login (after the module was finalised)."""
        for each in self.sessions:
            each.session = None
            each.keys.clear()
        self.login = None
        self.token = None
