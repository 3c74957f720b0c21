"""What the proxy relies on in aiohttp beyond its documented API, checked against the installed
aiohttp so an upgrade that changes it fails here, with a message saying what changed, instead of
somewhere in the transport.

``web/connection.py`` subclasses ``BaseSite`` and stores its listener in the private
``BaseSite._server`` (``BaseSite.stop`` closes it, ``AppRunner.addresses`` reads it);
``web/protocol.py`` subclasses ``RequestHandler`` and replaces ``handle_error``, which aiohttp
calls with the parser's errors. pyproject.toml caps aiohttp below 4 for the same reason.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from xks_proxy.web.connection import BASE_SITE_PRIVATE_ATTRIBUTES, ConnectionRegistry, XksSite
from xks_proxy.web.inline import INLINE_PRIVATE_ATTRIBUTES
from xks_proxy.web.protocol import LINGER_SECONDS
from xks_proxy.web.request import XksRequest
from xks_proxy.web.responses import Answer

UPGRADE_HINT = (
    "aiohttp changed; adapt xks_proxy/web/connection.py, web/protocol.py and web/inline.py"
)
HANDLER_OPTIONS: dict[str, Any] = {
    "access_log": None,
    "keepalive_timeout": 5.0,
    "lingering_time": LINGER_SECONDS,
    "auto_decompress": False,
}


def test_base_site_still_has_the_private_attributes_the_proxy_sets() -> None:
    slots = set(web.BaseSite.__slots__)
    missing = [name for name in BASE_SITE_PRIVATE_ATTRIBUTES if name not in slots]
    assert not missing, f"BaseSite no longer has {missing} (has {sorted(slots)}): {UPGRADE_HINT}"
    stop = inspect.getsource(web.BaseSite.stop)
    assert "self._server" in stop, f"BaseSite.stop no longer closes self._server: {UPGRADE_HINT}"


def test_request_handler_keeps_the_hooks_the_proxy_overrides() -> None:
    handle_error = inspect.signature(RequestHandler.handle_error)
    assert list(handle_error.parameters) == ["self", "request", "status", "exc", "message"], (
        f"RequestHandler.handle_error is now {handle_error}: {UPGRADE_HINT}"
    )
    options = inspect.signature(RequestHandler.__init__).parameters
    missing = [name for name in HANDLER_OPTIONS if name not in options]
    assert not missing, f"RequestHandler no longer takes {missing}: {UPGRADE_HINT}"


def test_request_handler_keeps_the_state_inline_answers_use() -> None:
    """web/inline.py does per request what RequestHandler.start() and _handle_request() do,
    with the same private state."""
    slots = set(RequestHandler.__slots__)
    missing = [
        name
        for name in INLINE_PRIVATE_ATTRIBUTES
        if name not in slots and not hasattr(RequestHandler, name)
    ]
    assert not missing, f"RequestHandler no longer has {missing}: {UPGRADE_HINT}"
    start = inspect.getsource(RequestHandler.start)
    for step in ("self._waiter", "message_consumed()", "_next_keepalive_close_time"):
        assert step in start, f"RequestHandler.start no longer uses {step}: {UPGRADE_HINT}"


async def _pong(request: web.Request) -> web.Response:
    return web.Response(text="pong")


@pytest.fixture
async def site() -> AsyncIterator[tuple[web.AppRunner, XksSite]]:
    app = web.Application()
    app.router.add_get("/ping", _pong)
    runner = web.AppRunner(app, **HANDLER_OPTIONS)
    await runner.setup()
    xks_site = XksSite(
        runner,
        "127.0.0.1",
        0,
        registry=ConnectionRegistry(),
        tls=lambda: None,
        header_timeout=5.0,
        handler_options=HANDLER_OPTIONS,
    )
    await xks_site.start()
    yield runner, xks_site
    await runner.cleanup()


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    return answer


async def test_the_site_serves_lists_its_address_and_stops(
    site: tuple[web.AppRunner, XksSite],
) -> None:
    runner, xks_site = site
    port = xks_site.port
    assert [address[1] for address in runner.addresses] == [port], (
        f"AppRunner.addresses no longer finds the listener stored in BaseSite._server: "
        f"{UPGRADE_HINT}"
    )
    answer = await _exchange(port, b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"pong")
    await xks_site.stop()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_parse_errors_reach_the_proxys_handle_error(
    site: tuple[web.AppRunner, XksSite],
) -> None:
    _, xks_site = site
    answer = await _exchange(xks_site.port, b"\x01NOT-HTTP / HTTP/1.1\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split()[1] == b"400", answer
    assert json.loads(body)["errorName"] == "ValidationException", (
        f"aiohttp no longer answers parse errors through RequestHandler.handle_error: "
        f"{UPGRADE_HINT}"
    )


async def test_a_shortcut_answers_the_requests_it_takes_and_routes_the_rest() -> None:
    """web/protocol.py replaces the handler's private ``_request_handler`` (the Application's
    ``_handle``) with one that asks the shortcut first."""
    assert "_request_handler" in RequestHandler.__slots__, f"no _request_handler: {UPGRADE_HINT}"

    async def short(request: XksRequest) -> Answer:
        return Answer(200, b"short")

    app = web.Application()
    app.router.add_get("/ping", _pong)
    runner = web.AppRunner(app, **HANDLER_OPTIONS)
    await runner.setup()
    xks_site = XksSite(
        runner,
        "127.0.0.1",
        0,
        registry=ConnectionRegistry(),
        tls=lambda: None,
        header_timeout=5.0,
        handler_options=HANDLER_OPTIONS,
        shortcut=lambda request: short if request.method == "POST" else None,
    )
    await xks_site.start()
    try:
        close = b"Host: x\r\nConnection: close\r\n"
        taken = await _exchange(xks_site.port, b"POST /ping HTTP/1.1\r\n" + close + b"\r\n")
        assert taken.startswith(b"HTTP/1.1 200") and taken.endswith(b"short"), (
            f"the shortcut was not asked: {UPGRADE_HINT}"
        )
        routed = await _exchange(xks_site.port, b"GET /ping HTTP/1.1\r\n" + close + b"\r\n")
        assert routed.startswith(b"HTTP/1.1 200") and routed.endswith(b"pong")
    finally:
        await runner.cleanup()
