"""Failed TLS handshakes leave nothing behind (found measuring issue 15's open loop under
overload, where clients that time out drop connections mid-handshake by the thousand).

A failed handshake must take its connection out of the registry, or a drain waits its whole
period for a connection long gone, and its objects (asyncio's TLS protocol with a 256 KiB read
buffer among them) must be freed at once by reference counting, not by a later full garbage
collection: such collections over thousands of dropped connections paused the event loop for
0.1 to 2.5 s.

In process, on a real listener: ``XksConnection`` behind ``loop.create_server`` with the proxy's
TLS context (a trustme certificate), and real client sockets that fail the handshake the ways an
overloaded proxy sees: a client that does not speak TLS, one that gives up halfway through its
ClientHello, one that leaves after sending it whole, and one that resets the connection then.
The garbage collector is off while they connect, so a connection still alive at the end is held
by a reference (the registry) or a reference cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import ssl
import struct
import weakref
from pathlib import Path

import trustme
from aiohttp.web_protocol import RequestHandler

from xks_proxy.config import TlsConfig
from xks_proxy.web.connection import ConnectionRegistry, XksConnection
from xks_proxy.web.tls import TlsState

ROUNDS = 5


def _tls_state(directory: Path) -> tuple[TlsState, trustme.CA]:
    authority = trustme.CA()
    leaf = authority.issue_cert("localhost")
    leaf.private_key_pem.write_to_path(str(directory / "server.key"))
    leaf.cert_chain_pems[0].write_to_path(str(directory / "server.pem"))
    return TlsState.load(TlsConfig(directory / "server.pem", directory / "server.key")), authority


def _client_hello(authority: trustme.CA) -> bytes:
    """The bytes a real TLS client sends first."""
    context = ssl.create_default_context()
    authority.configure_trust(context)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16", "a TLS handshake record"
    return hello


async def _send_and_leave(port: int, data: bytes, reset: bool = False) -> None:
    """Send ``data`` and close; with ``reset``, close with a TCP reset (what a client's kernel
    sends when it closes with the proxy's answer unread, as a client that timed out does)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    if data.startswith(b"GET"):
        # Not TLS: the proxy closes the connection itself.
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
    if reset:
        await asyncio.sleep(0.05)  # the proxy has read the ClientHello and waits for more
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        return
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


def _no_handler() -> RequestHandler:
    raise AssertionError("no handshake of this test completes")


async def test_failed_handshakes_leave_no_connection_behind(tmp_path: Path) -> None:
    tls, authority = _tls_state(tmp_path)
    hello = _client_hello(authority)
    registry = ConnectionRegistry()
    made: list[weakref.ref[XksConnection]] = []

    def protocol() -> XksConnection:
        connection = XksConnection(_no_handler, registry, lambda: tls, header_timeout=5.0)
        made.append(weakref.ref(connection))
        return connection

    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    clients: list[tuple[bytes, bool]] = [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False),  # not TLS
        (hello[: len(hello) // 2], False),  # gave up halfway through the ClientHello
        (hello, False),  # left after the ClientHello
        (hello, True),  # reset the connection after it
    ]
    gc.collect()
    gc.disable()
    try:
        for _ in range(ROUNDS):
            for data, reset in clients:
                await _send_and_leave(port, data, reset)
        # ``drain`` returns True once no connection is left (a bound on a hang, not a timing).
        assert await registry.drain(10.0), f"{len(registry.connections)} connections left"
        alive = len(made)
        for _ in range(500):  # the last callbacks of a closed connection run soon after it
            alive = sum(ref() is not None for ref in made)
            if not alive:
                break
            await asyncio.sleep(0.01)
        assert len(made) == ROUNDS * len(clients)
        assert alive == 0, f"{alive} failed handshakes' connections held by reference cycles"
    finally:
        gc.enable()
        server.close()
        await server.wait_closed()
