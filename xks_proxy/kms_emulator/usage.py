"""GetKeyLastUsage: the last successful cryptographic operation of each key.

The emulator tracks a key from its creation, so TrackingStartDate is the key's CreationDate.
ReEncrypt counts as a use of both its source and its destination key; the recorded KmsRequestId
is the request's id (the one an XKS proxy sees as kmsRequestId) and CloudTrailEventId the
eventID of the call's record in the event log.
"""

from __future__ import annotations

import time
from typing import Any

from xks_proxy.kms_emulator.core import Context, Core, Params
from xks_proxy.kms_emulator.shapes import service_model
from xks_proxy.kms_emulator.state import Key


def tracked_operations() -> frozenset[str]:
    return frozenset(service_model()["shapes"]["KeyLastUsageTrackingOperation"]["enum"])


def record(core: Core, operation: str, keys: list[Key], ctx: Context) -> None:
    for key in keys:
        key.last_usage = {
            "Operation": operation,
            "Timestamp": time.time(),
            "KmsRequestId": ctx.request_id,
            "CloudTrailEventId": ctx.event_id,
        }
        core.state.save_key(key)


async def get_key_last_usage(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key = core.key(params["KeyId"], ctx, aliases=False)
    usage = {k: v for k, v in (key.last_usage or {}).items() if v}
    return {
        "KeyId": key.arn,
        "KeyLastUsage": usage,
        "TrackingStartDate": key.created,
        "KeyCreationDate": key.created,
    }
