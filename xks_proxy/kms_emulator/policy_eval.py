"""Explicit denies in key policies: the part of policy evaluation the emulator honours.

A statement denies a call when its Effect is Deny, its Principal matches the caller (``*``, the
caller's ARN, or the account: its root ARN or bare id) and its Action matches ``kms:<Operation>``
(``*`` and ``?`` wildcards, case-insensitive, as IAM matches actions). Statements with a
Condition or with NotAction/NotPrincipal are not evaluated (the emulator cannot know the facts
they test), and without IAM there is nothing to grant or withhold besides, so everything not
explicitly denied is allowed. A deny answers AccessDeniedException with AWS's wording.
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any


def _listed(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _principal_matches(principal: Any, caller_arn: str, account: str) -> bool:
    if principal == "*":
        return True
    names = _listed(principal.get("AWS")) if isinstance(principal, dict) else []
    return any(n in ("*", caller_arn, account, f"arn:aws:iam::{account}:root") for n in names)


def _action_matches(actions: Any, action: str) -> bool:
    return any(fnmatch.fnmatchcase(action.lower(), pattern.lower()) for pattern in _listed(actions))


def explicit_deny(policy: str, action: str, caller_arn: str, account: str) -> bool:
    try:
        document = json.loads(policy)
    except ValueError:
        return False
    statements = document.get("Statement") if isinstance(document, dict) else None
    if isinstance(statements, dict):
        statements = [statements]
    for statement in statements if isinstance(statements, list) else []:
        if not isinstance(statement, dict) or statement.get("Effect") != "Deny":
            continue
        if {"Condition", "NotAction", "NotPrincipal"} & statement.keys():
            continue
        if _principal_matches(statement.get("Principal"), caller_arn, account) and (
            _action_matches(statement.get("Action"), action)
        ):
            return True
    return False
