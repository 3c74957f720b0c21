"""Run the real ``xks-proxy serve`` in a subprocess and talk to it as KMS would."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import trustme

from tests.ports import PortReservation
from xks_proxy import sigv4

XKS_PROXY = str(Path(sys.executable).parent / "xks-proxy")
# What ``serve`` says once a listener is bound, with the port it got (``--port 0`` included).
_LISTENING = re.compile(r"xks-proxy listening on https?://\S+:(\d+) ")
_PING = re.compile(r"load-balancer ping on http://\S+:(\d+)/ping")
_ADMIN = re.compile(r"admin API on (https?://\S+?)/admin/v1/")
# A bound on a hang, not on speed: on a 2-core machine loaded ~6 per core (other test runs,
# `pytest -n`), the two workers of `serve --workers 2` took over 30 s to import and bind.
WAIT_SECONDS = 90.0


def free_port() -> int:
    """A port free at the moment it is returned: for the developer tools that run alone
    (tools/). Tests never use it: under ``pytest -n`` another test may take the port before
    the server binds it; see tests/ports.py."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ProxyProcess:
    """``xks-proxy serve``; collects its log lines.

    Without ``port`` the proxy binds port 0 and ``port`` is the one it announces. The workers
    of ``--workers N`` bind one port together, so for them a port is reserved (tests/ports.py)
    until ``stop``. A caller that restarts a proxy on the same port passes a ``port`` it
    holds a ``PortReservation`` for."""

    def __init__(
        self,
        config: Path,
        *extra: str,
        ready: str = "key store",
        port: int | None = None,
        launcher: Sequence[str] = (),
    ) -> None:
        self._reservation = PortReservation() if port is None and "--workers" in extra else None
        if self._reservation is not None:
            port = self._reservation.port
        self.lines: list[str] = []
        self._terminated = False
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            # launcher: a program that sets something up and execs the proxy (same pid).
            [
                *launcher,
                XKS_PROXY,
                "serve",
                "--config",
                str(config),
                "--port",
                str(port or 0),
                *extra,
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.wait_for(ready)
            self.port: int = port or int(self._announced(_LISTENING, "xks-proxy listening on"))
        except BaseException:
            self.process.kill()
            self.stop()
            raise

    def _announced(self, pattern: re.Pattern[str], text: str) -> str:
        """The first group of ``pattern`` in the first log line that has it (waits for
        ``text``: a listener's line may come after the ``ready`` one)."""
        self.wait_for(text)
        found = next(match for line in self.lines if (match := pattern.search(line)))
        return found.group(1)

    @property
    def ping_port(self) -> int:
        """The load-balancer ping port the proxy announced (``ping_port = 0`` included)."""
        return int(self._announced(_PING, "load-balancer ping on"))

    @property
    def admin_url(self) -> str:
        """Where the admin API listener said it serves, without ``/admin/v1/``."""
        return self._announced(_ADMIN, "admin API on")

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def metrics_url(self) -> str:
        """Where the metrics listener said it serves (``http://host:port/metrics``)."""
        line = next(line for line in self.lines if "/metrics" in line)
        url = re.search(r"(http://\S+/metrics)", line)
        assert url is not None, line
        return url.group(1)

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = WAIT_SECONDS, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(text in line for line in self.lines) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (
                    self.process.poll() is not None and not self._reader.is_alive()
                ):
                    raise AssertionError(f"{text!r} never appeared in the log:\n{self.log}")
                self._changed.wait(min(remaining, 0.2))

    def send_signal(self, signum: int) -> None:
        self._terminated = self._terminated or signum == signal.SIGTERM
        self.process.send_signal(signum)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (unless already sent) and wait for the exit status."""
        if self.process.poll() is None and not self._terminated:
            self.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        # EOF comes once every process holding the pipe is gone: after a SIGKILLed supervisor
        # its workers still drain for a while. Never close the pipe under the reading thread.
        self._reader.join(timeout=timeout)
        assert not self._reader.is_alive(), "a child of the proxy still holds its stderr open"
        assert self.process.stderr is not None
        self.process.stderr.close()
        if self._reservation is not None:
            self._reservation.close()
        return code

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.stop()


def signed_request(
    path: str, document: Any, credential: sigv4.Credential, host: str, region: str = "us-east-1"
) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(document).encode()
    headers = sigv4.sign(
        method="POST",
        path=path,
        headers={"Host": host, "Content-Type": "application/json"},
        body=body,
        credential=credential,
        region=region,
        now=datetime.now(UTC),
    )
    return body, headers


def post(
    connection: http.client.HTTPConnection,
    path: str,
    document: Any,
    credential: sigv4.Credential,
) -> tuple[int, dict[str, Any]]:
    """A signed POST on an open (keep-alive) connection; returns status and JSON body."""
    host = f"{connection.host}:{connection.port}"
    body, headers = signed_request(path, document, credential, host)
    connection.request("POST", path, body=body, headers=headers)
    response = connection.getresponse()
    return response.status, json.loads(response.read())


_opened: list[http.client.HTTPConnection | socket.socket] = []


def connect(
    port: int, context: ssl.SSLContext | None = None, timeout: float = 10
) -> http.client.HTTPConnection:
    """An HTTP(S) connection, closed by ``close_all`` at the end of the test."""
    connection = (
        http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        if context is None
        else http.client.HTTPSConnection("localhost", port, context=context, timeout=timeout)
    )
    _opened.append(connection)
    return connection


def open_socket(port: int, timeout: float = 15) -> socket.socket:
    """A raw TCP connection, closed by ``close_all`` at the end of the test."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    _opened.append(sock)
    return sock


def close_all() -> None:
    while _opened:
        _opened.pop().close()


def add_tls(config: Path) -> trustme.CA:
    """Give a scaffolded configuration a ``[tls]`` table with a certificate for localhost from
    a fresh CA; returns the CA (``configure_trust`` a client context, or its PEM for curl)."""
    authority = trustme.CA()
    leaf = authority.issue_cert("localhost")
    leaf.private_key_pem.write_to_path(str(config.parent / "server.key"))
    leaf.cert_chain_pems[0].write_to_path(str(config.parent / "server.pem"))
    authority.cert_pem.write_to_path(str(config.parent / "ca.pem"))
    config.write_text(
        config.read_text() + '\n[tls]\ncertificate = "server.pem"\nprivate_key = "server.key"\n'
    )
    return authority
