"""The audit log: one JSON line per XKS request, for correlation with CloudTrail.

xks-spec §9.6: log kmsRequestId, the request metadata, processing time and outcome; never
plaintext. A record is built only from the fields below, which hold no plaintext, ciphertext,
key material or secret; the access key id (never the secret) tells which credential signed.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from xks_proxy.model import RequestMetadata

# Metadata values are opaque strings from the network; ARNs may be 2048 characters (§1).
MAX_FIELD_CHARS = 2048


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


class AuditLog:
    """Writes audit records to a file (reopened if rotated away) or to standard output."""

    def __init__(self, destination: str) -> None:
        handler: logging.Handler
        if destination == "-":
            handler = logging.StreamHandler(sys.stdout)
        else:
            handler = logging.handlers.WatchedFileHandler(destination, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._handler = handler

    def write(self, record: AuditRecord) -> None:
        metadata = asdict(record.metadata) if record.metadata else {}
        line = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "kmsRequestId": _clip(metadata.get("kms_request_id")),
            "kmsOperation": _clip(metadata.get("kms_operation")),
            "xksOperation": record.operation,
            "keyStore": record.key_store,
            "keyId": record.key_id,
            "accessKeyId": record.access_key_id,
            "awsPrincipalArn": _clip(metadata.get("aws_principal_arn")),
            "kmsKeyArn": _clip(metadata.get("kms_key_arn")),
            "kmsViaService": _clip(metadata.get("kms_via_service")),
            "awsSourceVpc": _clip(metadata.get("aws_source_vpc")),
            "awsSourceVpce": _clip(metadata.get("aws_source_vpce")),
            "outcome": record.outcome,
            "status": record.status,
            "latencyMs": round(record.latency_ms, 3),
        }
        message = json.dumps(line, separators=(",", ":"))
        self._handler.handle(logging.makeLogRecord({"msg": message, "levelno": logging.INFO}))

    def close(self) -> None:
        self._handler.close()
