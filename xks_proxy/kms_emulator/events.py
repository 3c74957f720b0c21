"""An event log in CloudTrail's record format: one JSON line per KMS call.

Each record has CloudTrail's fields (eventVersion, userIdentity from the access key id,
eventTime, eventSource, eventName, awsRegion, sourceIPAddress, userAgent, requestParameters,
responseElements, requestID, eventID, readOnly, resources, eventType, recipientAccountId,
errorCode/errorMessage on failure). Parameter names are in lower camel case as CloudTrail
writes them.

Nothing secret is written: every member the service model types as a blob (plaintext,
ciphertexts, data keys, messages, signatures, MACs, import tokens, wrapped key material) or
marks sensitive (the XKS proxy credential), and grant tokens, is left out.

For a key in an external key store, ``additionalEventData`` names the custom key store and the
external key, and ``requestID`` is the ``kmsRequestId`` of every request the emulator sent to
the proxy for this call: the proxy's audit log carries it, so ``grep`` finds one from the other,
as AWS's documentation shows for CloudTrail and XKS proxies.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from xks_proxy.kms_emulator.core import Context
from xks_proxy.kms_emulator.errors import KmsError
from xks_proxy.kms_emulator.shapes import service_model
from xks_proxy.kms_emulator.state import Key

_SECRET_MEMBERS = frozenset({"GrantToken", "GrantTokens"})
_USER_MAPS = frozenset({"EncryptionContext", "SourceEncryptionContext",
                        "DestinationEncryptionContext"})  # fmt: skip


def _scrub(value: Any, shape_name: str) -> Any:
    """``value`` without secrets, member names in lower camel case."""
    shapes = service_model()["shapes"]
    shape = shapes[shape_name]
    if shape["type"] == "structure" and isinstance(value, dict):
        clean: dict[str, Any] = {}
        for name, item in value.items():
            member = shape["members"].get(name)
            if member is None or name in _SECRET_MEMBERS:
                continue
            member_shape = shapes[member["shape"]]
            if member_shape["type"] == "blob" or member_shape.get("sensitive"):
                continue
            wire = name[:1].lower() + name[1:]
            clean[wire] = item if name in _USER_MAPS else _scrub(item, member["shape"])
        return clean
    if shape["type"] == "list" and isinstance(value, list):
        return [_scrub(item, shape["member"]["shape"]) for item in value]
    return value


def _read_only(operation: str) -> bool:
    return operation.startswith(("Describe", "List", "Get"))


class EventLog:
    def __init__(self, path: Path) -> None:
        self._file: IO[str] = path.open("a", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._file.close()

    def record(
        self, operation: str, params: dict[str, Any], ctx: Context, *,
        result: dict[str, Any] | None, error: KmsError | None, key: Key | None,
    ) -> None:  # fmt: skip
        spec = service_model()["operations"].get(operation, {})
        event: dict[str, Any] = {
            "eventVersion": "1.08",
            "userIdentity": {
                "type": "IAMUser",
                "principalId": ctx.access_key_id,
                "arn": ctx.principal_arn,
                "accountId": ctx.account,
                "accessKeyId": ctx.access_key_id,
                "userName": ctx.access_key_id,
            },
            "eventTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "eventSource": "kms.amazonaws.com",
            "eventName": operation,
            "awsRegion": ctx.region,
            "sourceIPAddress": ctx.source_ip,
            "userAgent": ctx.user_agent,
            "requestParameters": _scrub(params, spec["input"]["shape"]) if "input" in spec
            else None,
            "responseElements": _scrub(result, spec["output"]["shape"])
            if result and "output" in spec else None,
            "requestID": ctx.request_id,
            "eventID": ctx.event_id or str(uuid.uuid4()),
            "readOnly": _read_only(operation),
            "eventType": "AwsApiCall",
            "managementEvent": True,
            "recipientAccountId": ctx.account,
            "eventCategory": "Management",
        }  # fmt: skip
        if error is not None:
            event["errorCode"] = error.code
            event["errorMessage"] = error.message
        if key is not None:
            event["resources"] = [
                {"accountId": key.account, "type": "AWS::KMS::Key", "ARN": key.arn}
            ]
            if key.key_store_id is not None:
                event["additionalEventData"] = {
                    "customKeyStoreId": key.key_store_id,
                    "xksKeyId": key.xks_key_id,
                }
        line = json.dumps(event, separators=(",", ":"), default=str)
        with self._lock:
            self._file.write(line + "\n")
