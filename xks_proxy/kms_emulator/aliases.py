"""Aliases: per-region names for keys, usable as KeyId wherever AWS accepts an alias.

Names start with ``alias/``; ``alias/aws/`` is reserved for AWS managed keys
(InvalidAliasNameException). An alias points at a key by id or key ARN, never at another alias.
"""

from __future__ import annotations

import time
from typing import Any

from xks_proxy.kms_emulator import errors
from xks_proxy.kms_emulator.core import Context, Core, Params
from xks_proxy.kms_emulator.errors import KmsError
from xks_proxy.kms_emulator.shapes import page
from xks_proxy.kms_emulator.state import Alias

PREFIX = "alias/"
RESERVED = "alias/aws/"


def _checked_name(name: str) -> str:
    if not name.startswith(PREFIX) or name == PREFIX:
        raise KmsError(
            "ValidationException",
            'Alias must start with the prefix "alias/". Please see '
            "https://docs.aws.amazon.com/kms/latest/developerguide/kms-alias.html",
        )
    if name.startswith(RESERVED):
        raise KmsError(
            "InvalidAliasNameException",
            f"Alias name {name} begins with the reserved prefix {RESERVED}",
        )
    return name


async def create(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    name = _checked_name(params["AliasName"])
    if (ctx.region, name) in core.state.aliases:
        raise KmsError(
            "AlreadyExistsException", f"An alias with the name {ctx.arn(name)} already exists"
        )
    key = core.key(params["TargetKeyId"], ctx, aliases=False)
    core.refuse_state(key, "CreateAlias")
    now = time.time()
    core.state.save_alias(ctx.region, Alias(name, key.id, now, now))
    return {}


async def update(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    name = _checked_name(params["AliasName"])
    alias = core.state.aliases.get((ctx.region, name))
    if alias is None:
        raise errors.alias_not_found(ctx.arn(name))
    key = core.key(params["TargetKeyId"], ctx, aliases=False)
    core.refuse_state(key, "UpdateAlias")
    core.state.save_alias(ctx.region, Alias(name, key.id, alias.created, time.time()))
    return {}


async def list_aliases(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    only = core.key(params["KeyId"], ctx, aliases=False).id if params.get("KeyId") else None
    entries = [
        {
            "AliasName": alias.name,
            "AliasArn": ctx.arn(alias.name),
            "TargetKeyId": alias.key_id,
            "CreationDate": alias.created,
            "LastUpdatedDate": alias.updated,
        }
        for (region, _), alias in sorted(core.state.aliases.items())
        if region == ctx.region and only in (None, alias.key_id)
    ]
    shown, more = page(entries, params, default_limit=50)
    return {"Aliases": shown, **more}


async def delete(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    name = _checked_name(params["AliasName"])
    if (ctx.region, name) not in core.state.aliases:
        raise errors.alias_not_found(ctx.arn(name))
    core.state.delete_alias(ctx.region, name)
    return {}
