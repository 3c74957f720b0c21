"""Key rotation: automatic (EnableKeyRotation, RotationPeriodInDays 90-2560, default 365) and
on demand (RotateKeyOnDemand), for symmetric keys with Origin AWS_KMS.

Rotation adds key material and makes it current; ciphertexts name the material that made them,
so old ones still decrypt. Automatic rotation happens when a request arrives after
NextRotationDate. Keys in a custom key store cannot rotate (UnsupportedOperationException):
their material lives in the external key manager.
"""

from __future__ import annotations

import time
from typing import Any

from xks_proxy.kms_emulator.core import Context, Core, Params
from xks_proxy.kms_emulator.errors import KmsError
from xks_proxy.kms_emulator.key_specs import SYMMETRIC_DEFAULT
from xks_proxy.kms_emulator.keys import DAY, new_material
from xks_proxy.kms_emulator.shapes import page
from xks_proxy.kms_emulator.state import Key, KeyState, Origin, Rotation

DEFAULT_PERIOD_DAYS = 365
MAX_ON_DEMAND = 25  # on-demand rotations per key (AWS KMS quota)


def _rotatable(core: Core, params: Params, ctx: Context, operation: str) -> Key:
    key = core.key(params["KeyId"], ctx, aliases=False)
    if key.origin != Origin.AWS_KMS:
        raise KmsError(
            "UnsupportedOperationException",
            f"{key.arn} origin is {key.origin} which is not valid for this operation.",
        )
    if key.key_spec != SYMMETRIC_DEFAULT:
        raise KmsError(
            "UnsupportedOperationException",
            f"{key.arn} key spec is {key.key_spec}: only symmetric encryption keys rotate.",
        )
    if not key.primary and operation not in ("GetKeyRotationStatus", "ListKeyRotations"):
        raise KmsError(
            "UnsupportedOperationException",
            f"{key.arn} is a multi-Region replica key: manage its rotation on the primary key.",
        )
    if operation in ("EnableKeyRotation", "RotateKeyOnDemand") and key.state == KeyState.DISABLED:
        raise KmsError("DisabledException", f"{key.arn} is disabled.")
    core.refuse_state(key, operation)
    return key


def rotate(core: Core, key: Key, kind: str, now: float) -> None:
    """New current material for ``key`` and its multi-Region replicas, which share it."""
    material_id, material = new_material()
    for member in (key, *core.replicas(key)):
        member.materials[material_id] = material
        member.current_material = material_id
        member.rotations.append(Rotation(material_id, now, kind))
        core.state.save_key(member)


def _next_rotation(key: Key) -> float:
    assert key.rotation_start is not None and key.rotation_period_days is not None
    return key.rotation_start + key.rotation_period_days * DAY


def rotate_due(core: Core, now: float) -> None:
    """Automatic rotation of every enabled key whose NextRotationDate has passed."""
    for key in list(core.state.keys.values()):
        if key.rotation_enabled and key.state == KeyState.ENABLED and _next_rotation(key) <= now:
            key.rotation_start = now
            rotate(core, key, "AUTOMATIC", now)


async def get_status(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key = _rotatable(core, params, ctx, "GetKeyRotationStatus")
    # A replica reports its primary's rotation, which rotates them both.
    source = next((k for k in core.replicas(key) if k.primary), key) if not key.primary else key
    answer: dict[str, Any] = {"KeyRotationEnabled": source.rotation_enabled, "KeyId": key.arn}
    if source.rotation_enabled:
        answer["RotationPeriodInDays"] = source.rotation_period_days
        answer["NextRotationDate"] = _next_rotation(source)
    return answer


async def enable(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key = _rotatable(core, params, ctx, "EnableKeyRotation")
    period = params.get("RotationPeriodInDays") or DEFAULT_PERIOD_DAYS
    if not key.rotation_enabled or period != key.rotation_period_days:
        key.rotation_start = time.time()
    key.rotation_enabled, key.rotation_period_days = True, period
    core.state.save_key(key)
    return {}


async def disable(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key = _rotatable(core, params, ctx, "DisableKeyRotation")
    key.rotation_enabled, key.rotation_period_days, key.rotation_start = False, None, None
    core.state.save_key(key)
    return {}


async def rotate_on_demand(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key = _rotatable(core, params, ctx, "RotateKeyOnDemand")
    if sum(r.kind == "ON_DEMAND" for r in key.rotations) >= MAX_ON_DEMAND:
        raise KmsError(
            "LimitExceededException",
            f"{key.arn} has reached the limit of {MAX_ON_DEMAND} on-demand rotations.",
        )
    rotate(core, key, "ON_DEMAND", time.time())
    return {"KeyId": key.id}


async def list_rotations(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key = _rotatable(core, params, ctx, "ListKeyRotations")
    entries: list[dict[str, Any]] = []
    if params.get("IncludeKeyMaterial") == "ALL_KEY_MATERIAL":
        first = next(iter(key.materials))
        entries.append({"KeyId": key.id, "KeyMaterialId": first})
    entries += [
        {
            "KeyId": key.id,
            "KeyMaterialId": r.material_id,
            "RotationDate": r.date,
            "RotationType": r.kind,
        }
        for r in key.rotations
    ]
    for entry in entries:
        current = entry["KeyMaterialId"] == key.current_material
        entry["KeyMaterialState"] = "CURRENT" if current else "NON_CURRENT"
    shown, more = page(entries, params)
    return {"Rotations": shown, **more}
