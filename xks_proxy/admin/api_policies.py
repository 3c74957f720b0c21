"""The admin API's secondary-authorization policies (issue 13 part 2's Cedar files): get a key
store's policy file, validate a candidate one. Putting a file and explaining a decision are not
built yet (README, Admin API).

Validation is what start-up and reload do (``authz/policy.py``): a parse error names the line and
column, schema findings against the entity model are warnings. A candidate that does not parse
is an answer (``"valid": false`` with the error), not a failed request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from xks_proxy.admin.api import CONFIG_PATH, ApiError, json_field, read_json, run_blocking
from xks_proxy.admin.http import requires
from xks_proxy.config import load_config
from xks_proxy.web.responses import json_response

MAX_POLICY_CHARS = 60_000
CANDIDATE = Path("candidate")


def _summary(text: str, where: Path) -> dict[str, Any]:
    from xks_proxy.authz.policy import PolicyError, parse_policies  # cedarpy: only when asked

    try:
        parsed = parse_policies(text, where)
    except PolicyError as error:
        return {"valid": False, "error": str(error)}
    return {
        "valid": True,
        "policies": [{"id": p.name, "line": p.line} for p in parsed.policies.values()],
        "warnings": list(parsed.warnings),
    }


@requires("policies.get")
async def get_policy(request: web.Request) -> web.Response:
    name = request.match_info["store"]

    def work() -> dict[str, Any]:
        store = load_config(request.app[CONFIG_PATH], with_backends=False).key_store(name)
        if store.authorization_policy is None:
            return {"keyStore": store.name, "policyFile": None, "text": None}
        text = store.authorization_policy.read_text(encoding="utf-8")
        return {
            "keyStore": store.name,
            "policyFile": store.authorization_policy.name,
            "text": text,
            **_summary(text, Path(store.authorization_policy.name)),
        }

    return json_response(await run_blocking(work))


@requires("policies.validate")
async def validate_policy(request: web.Request) -> web.Response:
    text = json_field(await read_json(request), "policies", str)
    if len(text) > MAX_POLICY_CHARS:
        raise ApiError(400, "bad_request", f"policies: at most {MAX_POLICY_CHARS} characters")
    return json_response(await run_blocking(lambda: _summary(text, CANDIDATE)))


def add_policy_routes(app: web.Application, store_path: str) -> None:
    app.router.add_get(store_path + "/policy", get_policy)
    app.router.add_post(store_path + "/policy/validate", validate_policy)
