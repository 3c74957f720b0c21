"""Audit lines for key lifecycle actions: who ran what on which key, and how it ended.

They go to the proxy's audit log (``[audit] path``), one JSON line each, appended with one
``write(2)`` on an O_APPEND file like the request lines, and marked ``"event": "keyLifecycle"``.
When the audit log is standard output, lifecycle lines go to standard error instead: a command's
standard output is its answer. A line never holds key material, only ids, dates and outcomes.
The admin API writes one ``"event": "adminRequest"`` line per request through the same writer.
"""

from __future__ import annotations

import getpass
import os
import socket
import sys
from datetime import UTC, datetime

import orjson

from xks_proxy.audit import STDOUT
from xks_proxy.config import AuditConfig


def local_actor() -> str:
    """Who runs a command on this host: the OS user, the host and the process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()} (pid {os.getpid()})"


def sweeper_actor() -> str:
    """The actor of what a proxy's sweeper does (purges, expiries): no user ran it."""
    return f"sweeper@{socket.gethostname()} (pid {os.getpid()})"


class LifecycleAudit:
    def __init__(self, config: AuditConfig) -> None:
        self._config = config

    def record(
        self,
        *,
        actor: str,
        action: str,
        key_id: str | None,
        outcome: str,
        detail: str = "",
        event: str = "keyLifecycle",
    ) -> None:
        if not self._config.enabled:
            return
        line = orjson.dumps(
            {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "event": event,
                "action": action,
                "keyId": key_id,
                "actor": actor,
                "outcome": outcome,
                "detail": detail,
            }
        )
        if self._config.path == STDOUT:
            sys.stderr.write(line.decode() + "\n")
            return
        fd = os.open(self._config.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line + b"\n")
        finally:
            os.close(fd)
