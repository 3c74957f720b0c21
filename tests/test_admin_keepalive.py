"""An admin API connection kept alive across requests is not cut by the head timer (the
slow-loris guard of web/connection.py): the admin handlers report each request to their
connection (``report_to_connection``), as the XKS endpoint does."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from tests.test_admin_api import admin_deployment
from xks_proxy.web import admin_listener
from xks_proxy.web.admin_listener import start_admin_listener

REQUEST = b"GET /admin/v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n"


async def _answer(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = re.search(rb"(?i)content-length: (\d+)", head)
    assert length is not None, head
    await asyncio.wait_for(reader.readexactly(int(length.group(1))), 10)
    return head


async def test_a_keep_alive_connection_outlives_the_head_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin_listener, "HEADER_TIMEOUT_SECONDS", 0.3)
    listener = await start_admin_listener(admin_deployment(tmp_path).config)
    assert listener is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.site.port)
    try:
        for _ in range(3):
            writer.write(REQUEST)
            # No token: 401, answered on the same connection each time.
            assert (await _answer(reader)).startswith(b"HTTP/1.1 401")
            await asyncio.sleep(0.6)  # idle for twice the head timeout between requests
        # A head that does not arrive in time still closes the connection.
        writer.write(b"GET /admin/v1/health HTTP/1.1\r\n")
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
        await listener.stop()
