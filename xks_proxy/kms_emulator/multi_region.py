"""Multi-Region keys: ReplicateKey and UpdatePrimaryRegion.

A multi-Region key (CreateKey MultiRegion, id ``mrk-…``) is one key id in several regions: the
primary and its replicas share key material, key spec and usage, so a ciphertext made in one
region decrypts in another, and rotation (managed on the primary) rotates them all. Each has its
own ARN, state, description, key policy, tags, grants and aliases. The emulator replicates
symmetric, asymmetric and HMAC keys with Origin AWS_KMS (not imported material), and makes the
replica Enabled at once (AWS passes through Creating).
"""

from __future__ import annotations

import copy
import time
from typing import Any

from xks_proxy.kms_emulator.core import Context, Core, Params
from xks_proxy.kms_emulator.errors import KmsError
from xks_proxy.kms_emulator.policies import apply_tags, checked_policy, default_policy
from xks_proxy.kms_emulator.state import Key, KeyState, Origin


def _primary(core: Core, params: Params, ctx: Context) -> Key:
    key = core.key(params["KeyId"], ctx, aliases=False)
    if not key.multi_region or not key.primary:
        raise KmsError(
            "UnsupportedOperationException", f"{key.arn} is not a multi-Region primary key."
        )
    return key


async def replicate(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    primary = _primary(core, params, ctx)
    if primary.origin != Origin.AWS_KMS:
        raise KmsError(
            "UnsupportedOperationException",
            "The emulator replicates only keys with Origin AWS_KMS.",
        )
    if primary.state == KeyState.DISABLED:
        raise KmsError("DisabledException", f"{primary.arn} is disabled.")
    core.refuse_state(primary, "ReplicateKey")
    region = params["ReplicaRegion"]
    arn = primary.arn.replace(f":{primary.region}:", f":{region}:", 1)
    if region == primary.region or arn in core.state.keys:
        raise KmsError("AlreadyExistsException", f"{arn} already exists.")
    replica = Key(
        id=primary.id,
        arn=arn,
        account=primary.account,
        region=region,
        origin=primary.origin,
        key_spec=primary.key_spec,
        key_usage=primary.key_usage,
        materials=dict(primary.materials),
        current_material=primary.current_material,
        description=params.get("Description") or "",
        created=time.time(),
        multi_region=True,
        primary=False,
        rotations=copy.deepcopy(primary.rotations),
    )
    if params.get("Policy") is not None:
        replica.policy = checked_policy(params["Policy"])
    apply_tags(replica, params.get("Tags") or [])
    core.state.save_key(replica)
    return {
        "ReplicaKeyMetadata": core.metadata(replica),
        "ReplicaPolicy": replica.policy or default_policy(replica.account),
        "ReplicaTags": [{"TagKey": k, "TagValue": v} for k, v in sorted(replica.tags.items())],
    }


async def update_primary_region(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    primary = _primary(core, params, ctx)
    core.refuse_state(primary, "UpdatePrimaryRegion")
    target = next((k for k in core.replicas(primary) if k.region == params["PrimaryRegion"]), None)
    if target is None:
        raise KmsError(
            "NotFoundException", f"{primary.arn} has no replica in {params['PrimaryRegion']}."
        )
    # Rotation settings belong to the primary: they move with the role.
    target.rotation_enabled, primary.rotation_enabled = primary.rotation_enabled, False
    target.rotation_period_days, primary.rotation_period_days = primary.rotation_period_days, None
    target.rotation_start, primary.rotation_start = primary.rotation_start, None
    target.primary, primary.primary = True, False
    core.state.save_key(target)
    core.state.save_key(primary)
    return {}
