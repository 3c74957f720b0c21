"""The audit log: one JSON line per XKS request, for correlation with CloudTrail.

xks-spec §9.6: log kmsRequestId, the request metadata, processing time and outcome; never
plaintext. A record is built only from the fields below, which hold no plaintext, ciphertext,
key material or secret; the access key id (never the secret) tells which credential signed.

Each line is one ``write(2)`` on a file opened with O_APPEND, so lines from several worker
processes never interleave and nothing waits in a buffer when a process dies. If logrotate
moves the file away, SIGUSR1 (``xks-proxy reopen-logs``) reopens it at once; without the
signal, the proxy notices the move within a second (the next line goes to a new file).

A write that fails (ENOSPC on a full volume, EIO, a path that can no longer be opened: any
``OSError``) never escapes ``write``: it is counted (``xks_audit_write_failures_total``), logged
at most once a minute without a traceback, and ``write`` returns False so the endpoint can apply
``[audit] on_failure``. A line cut short by a full disk is ended by a newline in front of the
next line that succeeds, so every complete line stays parseable.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from xks_proxy.model import RequestMetadata
from xks_proxy.throttled_log import ThrottledWarning

log = logging.getLogger(__name__)

# Metadata values are opaque strings from the network; ARNs may be 2048 characters (§1).
MAX_FIELD_CHARS = 2048
ROTATION_CHECK_SECONDS = 1.0
STDOUT = "-"


@dataclass(slots=True)
class AuditRecord:
    """What one request did; filled in as the request is handled."""

    operation: str = "unknown"
    key_store: str | None = None
    key_id: str | None = None
    access_key_id: str | None = None
    metadata: RequestMetadata | None = None
    outcome: str = "success"
    status: int = 200
    # The secondary-authorization policies that denied the request (xks-spec §6.5).
    authz_policies: tuple[str, ...] = ()
    latency_ms: float = 0.0


def _clip(value: str | None) -> str | None:
    return None if value is None else value[:MAX_FIELD_CHARS]


class _UtcMilliseconds:
    """``datetime.isoformat(timespec="milliseconds")`` of a UTC time, the date and time of day
    formatted once a second: formatting a datetime costs more than the rest of the line."""

    # ".000+00:00" to ".999+00:00": an index, not a format, per line.
    _MILLISECONDS = tuple(f".{ms:03d}+00:00" for ms in range(1000))

    def __init__(self) -> None:
        self._second = -1.0
        self._prefix = ""

    def __call__(self, timestamp: float) -> str:
        second, fraction = divmod(timestamp, 1.0)
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return self._prefix + self._MILLISECONDS[int(fraction * 1000)]


_utc_milliseconds = _UtcMilliseconds()


def audit_line(record: AuditRecord, now: float) -> bytes:
    """One JSON line; ``now`` is a Unix timestamp."""
    metadata = record.metadata or RequestMetadata(kms_request_id="", kms_operation="")
    line = {
        "time": _utc_milliseconds(now),
        "kmsRequestId": _clip(metadata.kms_request_id) if record.metadata else None,
        "kmsOperation": _clip(metadata.kms_operation) if record.metadata else None,
        "xksOperation": record.operation,
        "keyStore": record.key_store,
        "keyId": record.key_id,
        "accessKeyId": record.access_key_id,
        "awsPrincipalArn": _clip(metadata.aws_principal_arn),
        "kmsKeyArn": _clip(metadata.kms_key_arn),
        "kmsViaService": _clip(metadata.kms_via_service),
        "awsSourceVpc": _clip(metadata.aws_source_vpc),
        "awsSourceVpce": _clip(metadata.aws_source_vpce),
        "outcome": record.outcome,
        "authzPolicies": list(record.authz_policies) or None,
        "status": record.status,
        "latencyMs": round(record.latency_ms, 3),
    }
    return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)


class AuditLog:
    """Appends audit lines to a file or to standard output."""

    def __init__(self, destination: str, on_failure: Callable[[], None] = lambda: None) -> None:
        self._path = None if destination == STDOUT else destination
        self._fd: int | None = 1 if self._path is None else self._open()
        self._checked = time.monotonic()
        self._on_failure = on_failure
        self._warning = ThrottledWarning(log)
        self._torn = False

    def _open(self) -> int:
        assert self._path is not None
        return os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def _reopen_if_rotated(self) -> None:
        now = time.monotonic()
        if self._path is None or self._fd is None or now - self._checked < ROTATION_CHECK_SECONDS:
            return
        self._checked = now
        try:
            current = os.stat(self._path)
            same = current.st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            self.close()
            self._fd = self._open()

    def reopen(self) -> None:
        """Open the configured path again (after rotation), then close the old file.

        Raises OSError, keeping the old file, when the path cannot be opened.
        """
        if self._path is None:
            return
        new = self._open()
        old, self._fd = self._fd, new
        if old is not None:
            os.close(old)
        self._checked = time.monotonic()
        self._torn = False  # a line cut short in the old file ends there

    def _append(self, line: bytes) -> None:
        if self._fd is None:
            self._fd = self._open()
        written = os.write(self._fd, line)
        if written < len(line):
            # Regular files write all or fail; a short count means the volume just filled up.
            self._torn = True
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(self, record: AuditRecord) -> bool:
        """Append the record's line; False (counted and logged) if it could not be written."""
        line = audit_line(record, time.time())
        try:
            self._reopen_if_rotated()
            self._append(b"\n" + line if self._torn else line)
        except OSError as error:
            self._on_failure()
            self._warning.warn(
                "cannot write the audit log %s: %s",
                self._path or "(standard output)",
                error.strerror or type(error).__name__,
            )
            return False
        self._torn = False
        return True

    def close(self) -> None:
        if self._path is not None and self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
