"""What a PKCS#11 session pool reports, so HSM saturation shows before it becomes 503s.

The backend tells a ``SessionPoolObserver`` its pool size, each request that must wait for a
free session (and for how long), each session taken and given back, and whether its calls run
on the event loop. ``ProxyMetrics`` turns these into ``xks_pkcs11_sessions``,
``xks_pkcs11_sessions_in_use``, ``xks_pkcs11_session_waiters``,
``xks_pkcs11_session_wait_seconds`` and ``xks_pkcs11_calls_on_event_loop``; the admin commands,
which serve no requests, use the silent default.
"""

from __future__ import annotations

from typing import Protocol


class SessionPoolObserver(Protocol):
    def pool_size(self, token: str, sessions: int) -> None: ...

    def waiting(self, token: str, change: int) -> None:
        """``change`` is +1 when a request starts waiting for a session, -1 when it stops."""

    def in_use(self, token: str, change: int) -> None:
        """+1 when a session is taken from the pool, -1 when it goes back."""

    def waited(self, token: str, seconds: float) -> None:
        """How long a request waited for its session (0 when one was free)."""

    def calls_on_event_loop(self, on_loop: bool) -> None:
        """Where the backend's calls run: at start-up, and again if they move to call threads
        (``pkcs11_placement``)."""


class SilentObserver:
    def pool_size(self, token: str, sessions: int) -> None:
        pass

    def waiting(self, token: str, change: int) -> None:
        pass

    def in_use(self, token: str, change: int) -> None:
        pass

    def waited(self, token: str, seconds: float) -> None:
        pass

    def calls_on_event_loop(self, on_loop: bool) -> None:
        pass
