"""Fault injection for drills: a backend wrapper that adds latency to every key operation.

Enabled per backend with ``fault_delay_ms``; it lets an operator (and the tests) watch the
request deadline answer DependencyTimeoutException, the health check report DEGRADED and the
latency alarms fire, against the real backend underneath.
"""

from __future__ import annotations

import asyncio

from xks_proxy.backends.base import Backend, EkmHealth, KeyInfo, SealedData


class DelayedBackend:
    def __init__(self, inner: Backend, delay_seconds: float) -> None:
        self._inner = inner
        self._delay = delay_seconds

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def inner(self) -> Backend:
        return self._inner

    @property
    def vendor(self) -> str:
        return self._inner.vendor

    async def open(self) -> None:
        await self._inner.open()

    async def close(self) -> None:
        await self._inner.close()

    async def describe_key(self, key_id: str) -> KeyInfo:
        await asyncio.sleep(self._delay)
        return await self._inner.describe_key(key_id)

    async def encrypt(self, key_id: str, plaintext: bytes, aad: bytes | None) -> SealedData:
        await asyncio.sleep(self._delay)
        return await self._inner.encrypt(key_id, plaintext, aad)

    async def decrypt(self, key_id: str, sealed: SealedData, aad: bytes | None) -> bytes:
        await asyncio.sleep(self._delay)
        return await self._inner.decrypt(key_id, sealed, aad)

    async def check_health(self) -> list[EkmHealth]:
        await asyncio.sleep(self._delay)
        return await self._inner.check_health()


_conforms: type[Backend] = DelayedBackend
