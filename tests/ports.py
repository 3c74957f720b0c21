"""Loopback ports for the servers the tests start, race-free while tests run in parallel
(``pytest -n``, see the README's test section) and beside other people's test runs.

Picking a "free port" (bind port 0, read it, close, hand the number to a server) is a race:
between the close and the server's bind, another test's bind(0) or any client's connect() may
take the port. So, in order of preference:

- The server binds port 0 itself and says which port it got: ``serve --port 0`` and
  ``port = 0`` in a configuration (``ProxyProcess`` reads the ports the proxy announces), the
  KMS emulator's ``--port 0``, aiohttp's test server.
- Where the number must be known before the server starts (the workers of
  ``serve --workers N`` share one port; a proxy restarted on the port HAProxy knows; a
  PostgreSQL stopped and started again; Prometheus; HAProxy's front end), a
  ``PortReservation``: a socket bound to the port with SO_REUSEADDR that never listens, held
  for as long as the server may use the port. The kernel gives neither a bind to port 0 nor a
  connect() a port that a socket is bound to, while a server binding that exact port with
  SO_REUSEADDR (aiohttp, PostgreSQL, Prometheus and HAProxy all set it) may share it with a
  socket that does not listen. Connections to a reserved port nobody listens on are refused,
  which also makes it the address of a server that is "gone".
"""

from __future__ import annotations

import socket
from types import TracebackType

LOOPBACK = "127.0.0.1"


class PortReservation:
    """A loopback port nobody else can be given until ``close``."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((LOOPBACK, 0))
        self.port: int = self._socket.getsockname()[1]

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> PortReservation:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
