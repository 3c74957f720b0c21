"""The audit log: one JSON line per XKS request, for correlation with CloudTrail.

xks-spec §9.6: log kmsRequestId, the request metadata, processing time and outcome; never
plaintext. A record is built only from the fields below, which hold no plaintext, ciphertext,
key material or secret; the access key id (never the secret) tells which credential signed.

Each line is one ``write(2)`` on a file opened with O_APPEND, so lines from several worker
processes never interleave and nothing waits in a buffer when a process dies. If logrotate
moves the file away, SIGUSR1 (``xks-proxy reopen-logs``) reopens it at once; without the
signal, the proxy notices the move within a second (the next line goes to a new file).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from xks_proxy.model import RequestMetadata

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
    latency_ms: float = 0.0


def _clip(value: str | None) -> str | None:
    return None if value is None else value[:MAX_FIELD_CHARS]


def audit_line(record: AuditRecord, now: datetime) -> bytes:
    metadata = record.metadata or RequestMetadata(kms_request_id="", kms_operation="")
    line = {
        "time": now.isoformat(timespec="milliseconds"),
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
        "status": record.status,
        "latencyMs": round(record.latency_ms, 3),
    }
    return orjson.dumps(line) + b"\n"


class AuditLog:
    """Appends audit lines to a file or to standard output."""

    def __init__(self, destination: str) -> None:
        self._path = None if destination == STDOUT else destination
        self._fd = 1 if self._path is None else self._open()
        self._checked = time.monotonic()

    def _open(self) -> int:
        assert self._path is not None
        return os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def _reopen_if_rotated(self) -> None:
        now = time.monotonic()
        if self._path is None or now - self._checked < ROTATION_CHECK_SECONDS:
            return
        self._checked = now
        try:
            current = os.stat(self._path)
            same = current.st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(self._fd)
            self._fd = self._open()

    def reopen(self) -> None:
        """Open the configured path again (after rotation), then close the old file."""
        if self._path is not None:
            old, self._fd = self._fd, self._open()
            os.close(old)
            self._checked = time.monotonic()

    def write(self, record: AuditRecord) -> None:
        self._reopen_if_rotated()
        os.write(self._fd, audit_line(record, datetime.now(UTC)))

    def close(self) -> None:
        if self._path is not None:
            os.close(self._fd)
