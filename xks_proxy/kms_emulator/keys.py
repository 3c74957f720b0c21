"""Key operations: create (AWS_KMS, or EXTERNAL_KEY_STORE validated through the proxy's
GetKeyMetadata), describe, list, enable/disable, description, and scheduled deletion.

Keys pending deletion are deleted for real once their DeletionDate passes (checked at each
request): after that they are NotFound and their key store may be deleted.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from xks_proxy.kms_emulator import errors
from xks_proxy.kms_emulator.core import Context, Core, Params
from xks_proxy.kms_emulator.errors import KmsError, ProxyCallError
from xks_proxy.kms_emulator.key_specs import ENCRYPT_DECRYPT, SPECS, SYMMETRIC_DEFAULT, KeySpec
from xks_proxy.kms_emulator.policies import apply_tags, checked_policy
from xks_proxy.kms_emulator.shapes import page
from xks_proxy.kms_emulator.state import ConnectionState, Key, KeyState, Origin
from xks_proxy.kms_emulator.xks_client import Caller, b64

DAY = 86_400
MIN_PENDING_WINDOW, MAX_PENDING_WINDOW = 7, 30  # ScheduleKeyDeletion: AWS's default is 30


def new_material(spec: KeySpec = SPECS[SYMMETRIC_DEFAULT]) -> tuple[str, str]:
    """A KeyMaterialId (64 hex digits) and fresh material for ``spec`` (Base64)."""
    return secrets.token_hex(32), b64(spec.generate())


def _spec_and_usage(params: Params) -> tuple[KeySpec, str]:
    name = params.get("KeySpec") or params.get("CustomerMasterKeySpec") or SYMMETRIC_DEFAULT
    spec = SPECS.get(name)
    if spec is None:
        raise KmsError(
            "UnsupportedOperationException", f"The emulator does not support KeySpec {name}."
        )
    usage = params.get("KeyUsage")
    if usage is None and spec.name != SYMMETRIC_DEFAULT:
        raise errors.validation(
            "You must specify a KeyUsage value for all KMS keys except for "
            "symmetric encryption keys."
        )
    usage = usage or ENCRYPT_DECRYPT
    if usage not in spec.usages:
        raise errors.validation(f"KeyUsage {usage} is not compatible with KeySpec {name}.")
    return spec, usage


async def create(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    spec, usage = _spec_and_usage(params)
    if params.get("Origin") == "AWS_CLOUDHSM":
        raise KmsError(
            "UnsupportedOperationException", "The emulator has no AWS CloudHSM key stores."
        )
    origin = Origin(params.get("Origin") or Origin.AWS_KMS)
    if spec.name != SYMMETRIC_DEFAULT and origin != Origin.AWS_KMS:
        raise KmsError(
            "UnsupportedOperationException",
            f"The emulator makes {spec.name} keys with Origin AWS_KMS only.",
        )
    multi_region = bool(params.get("MultiRegion"))
    if multi_region and origin == Origin.EXTERNAL_KEY_STORE:
        raise KmsError(
            "UnsupportedOperationException",
            "Multi-Region keys cannot be created in a custom key store.",
        )
    if origin != Origin.EXTERNAL_KEY_STORE and params.get("CustomKeyStoreId"):
        raise KmsError(
            "UnsupportedOperationException",
            "The emulator supports only external key stores (Origin "
            "EXTERNAL_KEY_STORE) as custom key stores.",
        )
    key_id = core.new_key_id(multi_region=multi_region)
    material_id, material = new_material(spec)
    key = Key(
        id=key_id,
        arn=ctx.arn(f"key/{key_id}"),
        account=ctx.account,
        region=ctx.region,
        origin=origin,
        key_spec=spec.name,
        key_usage=usage,
        materials={material_id: material},
        current_material=material_id,
        description=params.get("Description") or "",
        created=time.time(),
        multi_region=multi_region,
    )
    if origin == Origin.EXTERNAL:  # no material until ImportKeyMaterial
        key.materials, key.current_material = {}, None
        key.state = KeyState.PENDING_IMPORT
    if params.get("Policy") is not None:
        key.policy = checked_policy(params["Policy"])
    apply_tags(key, params.get("Tags") or [])
    if origin == Origin.EXTERNAL_KEY_STORE:
        await _attach_external_key(core, key, params, ctx)
    core.state.save_key(key)
    return {"KeyMetadata": core.metadata(key)}


async def _attach_external_key(core: Core, key: Key, params: Params, ctx: Context) -> None:
    store_id, xks_key_id = params.get("CustomKeyStoreId"), params.get("XksKeyId")
    if not store_id or not xks_key_id:
        raise errors.validation(
            "CustomKeyStoreId and XksKeyId are required for Origin EXTERNAL_KEY_STORE"
        )
    store = core.store(store_id, ctx)
    if store.state != ConnectionState.CONNECTED:
        raise KmsError("CustomKeyStoreInvalidStateException", errors.NOT_CONNECTED)
    if any(
        k.key_store_id == store.id and k.xks_key_id == xks_key_id for k in core.state.keys.values()
    ):
        raise KmsError(
            "XksKeyAlreadyInUseException",
            f"The external key {xks_key_id} is already associated with a KMS key in this key "
            "store.",
        )
    try:
        metadata = await core.xks.key_metadata(
            core.proxy(store, ctx),
            xks_key_id,
            Caller(ctx.principal_arn, "CreateKey", request_id=ctx.request_id),
        )
    except ProxyCallError as error:
        raise errors.for_create_key(error) from None
    problem = None
    if metadata.get("keySpec") != "AES_256":
        problem = "The key spec of the external key must be AES_256."
    elif not {"ENCRYPT", "DECRYPT"} <= set(metadata.get("keyUsage") or []):
        problem = "The key usage of the external key must include ENCRYPT and DECRYPT."
    elif metadata.get("keyStatus") != "ENABLED":
        problem = "The status of the external key must be ENABLED."
    if problem:
        raise KmsError("XksKeyInvalidConfigurationException", problem)
    key.key_store_id, key.xks_key_id = store.id, xks_key_id


async def describe(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    return {"KeyMetadata": core.metadata(core.key(params["KeyId"], ctx))}


async def list_keys(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    keys, more = page(core.keys(ctx), params)
    return {"Keys": [{"KeyId": k.id, "KeyArn": k.arn} for k in keys], **more}


async def _set_state(
    core: Core, params: Params, ctx: Context, operation: str, state: KeyState
) -> dict[str, Any]:
    key = core.key(params["KeyId"], ctx, aliases=False)
    core.refuse_state(key, operation)
    key.state = state
    core.state.save_key(key)
    return {}


async def enable(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    return await _set_state(core, params, ctx, "EnableKey", KeyState.ENABLED)


async def disable(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    return await _set_state(core, params, ctx, "DisableKey", KeyState.DISABLED)


async def update_description(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key = core.key(params["KeyId"], ctx, aliases=False)
    core.refuse_state(key, "UpdateKeyDescription")
    key.description = params["Description"]
    core.state.save_key(key)
    return {}


async def schedule_deletion(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key = core.key(params["KeyId"], ctx, aliases=False)
    days = params.get("PendingWindowInDays", MAX_PENDING_WINDOW)
    if not MIN_PENDING_WINDOW <= days <= MAX_PENDING_WINDOW:
        bound = "greater" if days < MIN_PENDING_WINDOW else "less"
        limit = MIN_PENDING_WINDOW if days < MIN_PENDING_WINDOW else MAX_PENDING_WINDOW
        raise errors.constraint(
            str(days), "pendingWindowInDays", f"have value {bound} than or equal to {limit}"
        )
    core.refuse_state(key, "ScheduleKeyDeletion")
    key.state = KeyState.PENDING_DELETION
    key.deletion_date, key.pending_window_days = time.time() + days * DAY, days
    core.state.save_key(key)
    return {
        "KeyId": key.arn,
        "DeletionDate": key.deletion_date,
        "KeyState": key.state.value,
        "PendingWindowInDays": days,
    }


async def cancel_deletion(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key = core.key(params["KeyId"], ctx, aliases=False)
    if key.state != KeyState.PENDING_DELETION:
        raise KmsError("KMSInvalidStateException", f"{key.arn} is not pending deletion.")
    key.state, key.deletion_date, key.pending_window_days = KeyState.DISABLED, None, None
    core.state.save_key(key)
    return {"KeyId": key.arn}


def delete_expired(core: Core, now: float) -> None:
    """Delete keys whose waiting period is over, and the aliases that named them."""
    for key in list(core.state.keys.values()):
        if key.state == KeyState.PENDING_DELETION and (key.deletion_date or now) < now:
            for (region, name), alias in list(core.state.aliases.items()):
                if (region, alias.key_id) == (key.region, key.id):
                    core.state.delete_alias(region, name)
            core.state.delete_key(key.arn)
