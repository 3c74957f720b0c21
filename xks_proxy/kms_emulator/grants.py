"""Grants: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant.

Grants are recorded, listed and retired as in AWS KMS (operations checked against the key's
type, a repeated CreateGrant with the same Name and the same grant answers the existing grant,
RetireGrant by grant token or by key ARN and grant id). Like key policies they are not
evaluated: the emulator does not authorize calls, so every grant token a call carries is
accepted.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from xks_proxy.kms_emulator import errors
from xks_proxy.kms_emulator.core import Context, Core, Params
from xks_proxy.kms_emulator.errors import KmsError
from xks_proxy.kms_emulator.key_specs import (
    ENCAPSULATE_DECAPSULATE,
    ENCRYPT_DECRYPT,
    GENERATE_VERIFY_MAC,
    KEY_AGREEMENT,
    SIGN_VERIFY,
    SYMMETRIC_DEFAULT,
)
from xks_proxy.kms_emulator.shapes import page
from xks_proxy.kms_emulator.state import Grant, Key

MAX_GRANTS_PER_KEY = 50_000  # AWS KMS quota
_COMMON = frozenset({"CreateGrant", "RetireGrant", "DescribeKey"})
_RE_ENCRYPT = frozenset({"Encrypt", "Decrypt", "ReEncryptFrom", "ReEncryptTo"})
_SYMMETRIC = (
    _COMMON
    | _RE_ENCRYPT
    | {
        "GenerateDataKey",
        "GenerateDataKeyWithoutPlaintext",
        "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
    }
)
_BY_USAGE = {
    ENCRYPT_DECRYPT: _COMMON | _RE_ENCRYPT | {"GetPublicKey"},
    SIGN_VERIFY: _COMMON | {"Sign", "Verify", "GetPublicKey"},
    GENERATE_VERIFY_MAC: _COMMON | {"GenerateMac", "VerifyMac"},
    KEY_AGREEMENT: _COMMON | {"DeriveSharedSecret", "GetPublicKey"},
    ENCAPSULATE_DECAPSULATE: _COMMON | {"Encapsulate", "Decapsulate", "GetPublicKey"},
}


def _allowed_operations(key: Key) -> frozenset[str]:
    return _SYMMETRIC if key.key_spec == SYMMETRIC_DEFAULT else _BY_USAGE[key.key_usage]


def _entry(key: Key, grant: Grant) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "KeyId": key.arn,
        "GrantId": grant.id,
        "CreationDate": grant.created,
        "IssuingAccount": f"arn:aws:iam::{key.account}:root",
        "Operations": grant.operations,
    }
    optional = {
        "Name": grant.name,
        "GranteePrincipal": grant.grantee,
        "RetiringPrincipal": grant.retiring,
        "Constraints": grant.constraints,
    }
    return entry | {k: v for k, v in optional.items() if v is not None}


def _dry_run(params: Params) -> None:
    if params.get("DryRun"):
        raise KmsError(
            "DryRunOperationException",
            "The request would have succeeded, but the DryRun option is set.",
        )


async def create(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key = core.key(params["KeyId"], ctx, aliases=False)
    core.refuse_state(key, "CreateGrant")
    operations = list(dict.fromkeys(params["Operations"]))
    invalid = sorted(set(operations) - _allowed_operations(key))
    if not operations or invalid:
        raise errors.validation(
            f"Grant operations {invalid or operations} are not valid for "
            f"{key.arn} ({key.key_spec}, {key.key_usage})."
        )
    if params.get("GranteePrincipal") is None and params.get("GranteeServicePrincipal") is None:
        raise errors.constraint(None, "granteePrincipal", "not be null")
    _dry_run(params)
    grant = Grant(
        id=secrets.token_hex(32),
        token=secrets.token_urlsafe(96),
        operations=operations,
        created=time.time(),
        grantee=params.get("GranteePrincipal") or params.get("GranteeServicePrincipal"),
        retiring=params.get("RetiringPrincipal") or params.get("RetiringServicePrincipal"),
        name=params.get("Name"),
        constraints=params.get("Constraints"),
    )
    for existing in key.grants:
        if grant.name is not None and (
            existing.name,
            existing.grantee,
            existing.retiring,
            existing.operations,
            existing.constraints,
        ) == (grant.name, grant.grantee, grant.retiring, grant.operations, grant.constraints):
            return {"GrantToken": existing.token, "GrantId": existing.id}
    if len(key.grants) >= MAX_GRANTS_PER_KEY:
        raise KmsError("LimitExceededException", f"{key.arn} has too many grants.")
    key.grants.append(grant)
    core.state.save_key(key)
    return {"GrantToken": grant.token, "GrantId": grant.id}


async def list_grants(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key = core.key(params["KeyId"], ctx, aliases=False)
    grants = [
        g
        for g in key.grants
        if params.get("GrantId") in (None, g.id)
        and params.get("GranteePrincipal") in (None, g.grantee)
    ]
    shown, more = page(grants, params, default_limit=50)
    return {"Grants": [_entry(key, g) for g in shown], **more}


async def list_retirable(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    principal = params.get("RetiringPrincipal") or params.get("RetiringServicePrincipal")
    if principal is None:
        raise errors.constraint(None, "retiringPrincipal", "not be null")
    entries = [_entry(k, g) for k in core.keys(ctx) for g in k.grants if g.retiring == principal]
    shown, more = page(entries, params, default_limit=50)
    return {"Grants": shown, **more}


def _remove(core: Core, key: Key, grant: Grant, params: Params) -> dict[str, Any]:
    _dry_run(params)
    key.grants = [g for g in key.grants if g.id != grant.id]
    core.state.save_key(key)
    return {}


def _by_id(core: Core, params: Params, ctx: Context) -> tuple[Key, Grant]:
    key = core.key(params["KeyId"], ctx, aliases=False)
    for grant in key.grants:
        if grant.id == params["GrantId"]:
            return key, grant
    raise KmsError("NotFoundException", f"Grant ID {params['GrantId']} not found for {key.arn}.")


async def retire(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    token = params.get("GrantToken")
    if token is not None:
        for key in core.keys(ctx):
            for grant in key.grants:
                if secrets.compare_digest(grant.token, token):
                    return _remove(core, key, grant, params)
        raise KmsError("InvalidGrantTokenException", "The grant token is not valid.")
    if params.get("KeyId") is None or params.get("GrantId") is None:
        raise errors.validation("Specify either GrantToken, or KeyId and GrantId.")
    key, grant = _by_id(core, params, ctx)
    return _remove(core, key, grant, params)


async def revoke(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key, grant = _by_id(core, params, ctx)
    return _remove(core, key, grant, params)
