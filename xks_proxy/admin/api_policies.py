"""The admin API's secondary-authorization policies (issue 13 part 2's Cedar files): get a key
store's policy, validate a candidate, put a new one in force, explain a decision.

- ``GET …/policy``: the ``authorization_policy`` file's text, its policy ids and lines, warnings.
- ``POST …/policy/validate`` ``{"policies": text}``: what start-up and reload would say
  (``authz/policy.py``): a parse error names the line and column, schema findings against the
  entity model are warnings. A candidate that does not parse is an answer (``"valid": false``),
  not a failed request; nothing changes.
- ``PUT …/policy`` ``{"policies": text}`` (security-admin): validated first; one that does not
  parse is refused 400 with the error position and nothing changes. Otherwise it replaces the
  key store's ``authorization_policy`` file atomically (a temporary file in the same directory,
  fsynced, renamed over it; the file keeps its mode) and the proxy reloads as on SIGHUP, which
  builds new authorizers: the new policy is in force with an empty decision cache. The answer
  comes when the file is written and the reload asked for; the proxy's log says how the reload
  went (a configuration that does not load for another reason keeps the running one). A key
  store without an ``authorization_policy`` is refused 409: the configuration file is the
  operator's, and this API does not rewrite it. The audit line says who, which key store, the
  policy ids and the SHA-256 of the text.
- ``POST …/policy/explain``: the body is a request document as ``policy test --request`` takes
  (``authz/explain.py``); the answer is the decision and the determining policies with their
  text. With a ``candidatePolicies`` string in the body, that text decides instead of the file
  in force (try an edit before putting it).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from aiohttp import web

from xks_proxy.admin.api import (
    CONFIG_PATH,
    RELOAD,
    ApiError,
    json_field,
    read_json,
    run_blocking,
)
from xks_proxy.admin.http import DETAIL, requires
from xks_proxy.config import KeyStoreConfig, load_config
from xks_proxy.credentials import write_private_file
from xks_proxy.errors import CommandError, ConfigError
from xks_proxy.web.responses import json_response

MAX_POLICY_CHARS = 60_000
CANDIDATE = Path("candidate")
NEW_POLICY_FILE_MODE = 0o644


def summarize_policies(text: str, where: Path) -> dict[str, Any]:
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


def _policy_text(document: dict[str, Any], name: str) -> str:
    text = json_field(document, name, str)
    if len(text) > MAX_POLICY_CHARS:
        raise ApiError(400, "bad_request", f"{name}: at most {MAX_POLICY_CHARS} characters")
    return text


def _key_store(request: web.Request) -> KeyStoreConfig:
    name = request.match_info["store"]
    return load_config(request.app[CONFIG_PATH], with_backends=False).key_store(name)


@requires("policies.get")
async def get_policy(request: web.Request) -> web.Response:
    def work() -> dict[str, Any]:
        store = _key_store(request)
        if store.authorization_policy is None:
            return {"keyStore": store.name, "policyFile": None, "text": None}
        text = store.authorization_policy.read_text(encoding="utf-8")
        return {
            "keyStore": store.name,
            "policyFile": store.authorization_policy.name,
            "text": text,
            **summarize_policies(text, Path(store.authorization_policy.name)),
        }

    return json_response(await run_blocking(work))


@requires("policies.validate")
async def validate_policy(request: web.Request) -> web.Response:
    text = _policy_text(await read_json(request), "policies")
    return json_response(await run_blocking(lambda: summarize_policies(text, CANDIDATE)))


def _write_policy(path: Path, text: str) -> None:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = NEW_POLICY_FILE_MODE
    write_private_file(path, text, mode=mode)


@requires("policies.put")
async def put_policy(request: web.Request) -> web.Response:
    from xks_proxy.authz.policy import PolicyError, parse_policies

    text = _policy_text(await read_json(request), "policies")
    digest = hashlib.sha256(text.encode()).hexdigest()
    request[DETAIL] = f"key store {request.match_info['store']}, sha256 {digest}"

    def work() -> dict[str, Any]:
        store = _key_store(request)
        path = store.authorization_policy
        if path is None:
            raise CommandError(
                f"key store {store.name} has no authorization_policy: name a file for it in "
                'the configuration (authorization_policy = "FILE.cedar") and reload first'
            )
        try:
            parsed = parse_policies(text, Path(path.name))
        except PolicyError as error:
            raise ApiError(400, "invalid_policy", str(error)) from None
        _write_policy(path, text)
        ids = [p.name for p in parsed.policies.values()]
        request[DETAIL] = (
            f"key store {store.name}, {path.name}: {len(ids)} policies "
            f"({', '.join(ids)[:160]}), sha256 {digest}"
        )
        return {
            "keyStore": store.name,
            "policyFile": path.name,
            "sha256": digest,
            "policies": [{"id": p.name, "line": p.line} for p in parsed.policies.values()],
            "warnings": list(parsed.warnings),
        }

    answer = await run_blocking(work)
    request.app[RELOAD]()
    return json_response({**answer, "reload": "requested"})


@requires("policies.explain")
async def explain_policy(request: web.Request) -> web.Response:
    from xks_proxy.authz.authorizer import Authorizer
    from xks_proxy.authz.explain import explain, request_from_document
    from xks_proxy.authz.policy import PolicyError, load_policy_file, parse_policies

    document = await read_json(request)
    candidate = (
        _policy_text(document, "candidatePolicies")
        if document.get("candidatePolicies") is not None
        else None
    )
    try:
        asked = request_from_document(document, "request")
    except ConfigError as error:
        raise ApiError(400, "bad_request", str(error)) from None

    def work() -> dict[str, Any]:
        store = _key_store(request)
        try:
            if candidate is not None:
                policies = parse_policies(candidate, CANDIDATE)
            elif store.authorization_policy is not None:
                policies = load_policy_file(store.authorization_policy)
            else:
                policies = None
        except PolicyError as error:
            status = 400 if candidate is not None else 409
            raise ApiError(status, "invalid_policy", str(error)) from None
        authorizer = None if policies is None else Authorizer(store.name, policies)
        return {"keyStore": store.name, **explain(store.name, authorizer, asked).as_json()}

    return json_response(await run_blocking(work))


def add_policy_routes(app: web.Application, store_path: str) -> None:
    app.router.add_get(store_path + "/policy", get_policy)
    app.router.add_put(store_path + "/policy", put_policy)
    app.router.add_post(store_path + "/policy/validate", validate_policy)
    app.router.add_post(store_path + "/policy/explain", explain_policy)
