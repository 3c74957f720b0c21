"""Key policies and tags: what Terraform's aws_kms_key reads back after every apply.

A key without an explicit policy has AWS's default key policy, which gives the account root
principal ``kms:*``. Only the policy name ``default`` exists (ListKeyPolicies). A policy must be
a JSON object with a ``Statement``; anything else is MalformedPolicyDocumentException. Policies
are stored and returned as given; they are not evaluated.

Tags follow the Developer Guide's rules: at most 50 per key, the ``aws:`` prefix is reserved,
TagResource overwrites the value of an existing tag key.
"""

from __future__ import annotations

import json
from typing import Any

from xks_proxy.kms_emulator.core import Context, Core, Params
from xks_proxy.kms_emulator.errors import KmsError
from xks_proxy.kms_emulator.shapes import page
from xks_proxy.kms_emulator.state import Key

POLICY_NAME = "default"
MAX_TAGS = 50


def default_policy(account: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Id": "key-default-1",
            "Statement": [
                {
                    "Sid": "Enable IAM User Permissions",
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                    "Action": "kms:*",
                    "Resource": "*",
                }
            ],
        },
        indent=2,
    )


def checked_policy(policy: str) -> str:
    try:
        document = json.loads(policy)
    except ValueError:
        document = None
    if not isinstance(document, dict) or not isinstance(document.get("Statement"), list | dict):
        raise KmsError(
            "MalformedPolicyDocumentException",
            "The key policy is not a JSON policy document with a Statement.",
        )
    return policy


def _policy_name(params: Params) -> str:
    name = params.get("PolicyName") or POLICY_NAME
    if name != POLICY_NAME:
        raise KmsError("NotFoundException", f"Key policy {name} does not exist.")
    return str(name)


async def get_key_policy(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key = core.key(params["KeyId"], ctx, aliases=False)
    name = _policy_name(params)
    return {"Policy": key.policy or default_policy(key.account), "PolicyName": name}


async def put_key_policy(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key = core.key(params["KeyId"], ctx, aliases=False)
    _policy_name(params)
    core.refuse_state(key, "PutKeyPolicy")
    key.policy = checked_policy(params["Policy"])
    core.state.save_key(key)
    return {}


async def list_key_policies(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    core.key(params["KeyId"], ctx, aliases=False)
    names, more = page([POLICY_NAME], params)
    return {"PolicyNames": names, **more}


def apply_tags(key: Key, tags: list[dict[str, str]]) -> None:
    """Add or overwrite ``tags`` (the model checked their shape) on ``key``, all or nothing."""
    merged = dict(key.tags)
    for tag in tags:
        if tag["TagKey"].startswith("aws:"):
            raise KmsError("TagException", "Tags beginning with aws: are reserved.")
        merged[tag["TagKey"]] = tag["TagValue"]
    if len(merged) > MAX_TAGS:
        raise KmsError("TagException", f"A KMS key can have at most {MAX_TAGS} tags.")
    key.tags = merged


async def tag_resource(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key = core.key(params["KeyId"], ctx, aliases=False)
    core.refuse_state(key, "TagResource")
    apply_tags(key, params["Tags"])
    core.state.save_key(key)
    return {}


async def untag_resource(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key = core.key(params["KeyId"], ctx, aliases=False)
    core.refuse_state(key, "UntagResource")
    for tag_key in params["TagKeys"]:
        key.tags.pop(tag_key, None)
    core.state.save_key(key)
    return {}


async def list_resource_tags(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    key = core.key(params["KeyId"], ctx, aliases=False)
    tags = [{"TagKey": k, "TagValue": v} for k, v in sorted(key.tags.items())]
    shown, more = page(tags, params, default_limit=50)
    return {"Tags": shown, **more}
