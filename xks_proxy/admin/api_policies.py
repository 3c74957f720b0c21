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
  operator's, and this API does not rewrite it. With ``authorization_policy = "database"`` the
  text is written to the key store database instead (``authz/stored.py``) and no reload is
  needed: every proxy following that database, this one included, puts it in force within
  about a second. The audit line says who, which key store, the policy ids and the SHA-256 of
  the text.
- ``POST …/policy/explain``: the body is a request document as ``policy test --request`` takes
  (``authz/explain.py``); the answer is the decision and the determining policies with their
  text. With a ``candidatePolicies`` string in the body, that text decides instead of the file
  in force (try an edit before putting it).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
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
from xks_proxy.admin.http import CALLER, DETAIL, actor_of, requires
from xks_proxy.config import Config, KeyStoreConfig, load_config
from xks_proxy.config_key_stores import POLICY_IN_STORE
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


@dataclass(frozen=True, slots=True)
class _InForce:
    """A key store's policy text as the proxy reads it, and how to name it."""

    store: KeyStoreConfig
    text: str | None
    where: Path  # how parse errors name it
    about: dict[str, Any]  # policyFile, or policyStore and who put it when


def _in_force(config_path: Path, name: str) -> _InForce:
    store = load_config(config_path, with_backends=False).key_store(name)
    if store.authorization_policy_in_store:
        from xks_proxy.authz.stored import read_stored_policy, stored_name

        # The database's location and KEK are in the backend's configuration.
        row = read_stored_policy(load_config(config_path), store)
        about: dict[str, Any] = {"policyFile": None, "policyStore": POLICY_IN_STORE}
        if row is not None:
            about |= {"revision": row.revision, "updatedAt": row.updated_at,
                      "updatedBy": row.updated_by}  # fmt: skip
        return _InForce(store, row.text if row else None, stored_name(store.name), about)
    path = store.authorization_policy
    if path is None:
        return _InForce(store, None, CANDIDATE, {"policyFile": None})
    return _InForce(
        store, path.read_text(encoding="utf-8"), Path(path.name), {"policyFile": path.name}
    )


@requires("policies.get")
async def get_policy(request: web.Request) -> web.Response:
    def work() -> dict[str, Any]:
        found = _in_force(request.app[CONFIG_PATH], request.match_info["store"])
        answer = {"keyStore": found.store.name, **found.about, "text": found.text}
        if found.text is not None:
            answer |= summarize_policies(found.text, found.where)
        return answer

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
    actor = actor_of(request[CALLER])

    def work() -> tuple[dict[str, Any], bool]:
        config_path = request.app[CONFIG_PATH]
        store = load_config(config_path, with_backends=False).key_store(request.match_info["store"])
        path = store.authorization_policy
        if path is None and not store.authorization_policy_in_store:
            raise CommandError(
                f"key store {store.name} has no authorization_policy: name a file for it in "
                'the configuration (authorization_policy = "FILE.cedar", or "database") and '
                "reload first"
            )
        where = Path(path.name) if path is not None else _stored_name(store.name)
        try:
            parsed = parse_policies(text, where)
        except PolicyError as error:
            raise ApiError(400, "invalid_policy", str(error)) from None
        ids = [p.name for p in parsed.policies.values()]
        answer: dict[str, Any] = {
            "keyStore": store.name,
            "sha256": digest,
            "policies": [{"id": p.name, "line": p.line} for p in parsed.policies.values()],
            "warnings": list(parsed.warnings),
        }
        if path is None:
            revision = _put_in_store(load_config(config_path), store, text, actor)
            answer |= {"policyFile": None, "policyStore": POLICY_IN_STORE, "revision": revision}
        else:
            _write_policy(path, text)
            answer["policyFile"] = path.name
        request[DETAIL] = (
            f"key store {store.name}, {answer['policyFile'] or 'key store database'}: "
            f"{len(ids)} policies ({', '.join(ids)[:160]}), sha256 {digest}"
        )
        return answer, path is not None

    answer, from_file = await run_blocking(work)
    if from_file:
        request.app[RELOAD]()
        return json_response({**answer, "reload": "requested"})
    # Every proxy following the key store database (this one included) reads it within ~1 s.
    return json_response({**answer, "reload": "not needed"})


def _stored_name(key_store: str) -> Path:
    from xks_proxy.authz.stored import stored_name

    return stored_name(key_store)


def _put_in_store(config: Config, store: KeyStoreConfig, text: str, actor: str) -> int:
    from xks_proxy.authz.stored import open_policy_database
    from xks_proxy.keystore.policies import PolicyRows

    database = open_policy_database(config, store)
    try:
        return PolicyRows(database).put(store.name, text, actor)
    finally:
        database.close()


@requires("policies.explain")
async def explain_policy(request: web.Request) -> web.Response:
    from xks_proxy.authz.authorizer import Authorizer
    from xks_proxy.authz.explain import explain, request_from_document
    from xks_proxy.authz.policy import PolicyError, parse_policies

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
        found = _in_force(request.app[CONFIG_PATH], request.match_info["store"])
        name = found.store.name
        try:
            if candidate is not None:
                policies = parse_policies(candidate, CANDIDATE)
            elif found.text is not None:
                policies = parse_policies(found.text, found.where)
            else:
                policies = None
        except PolicyError as error:
            status = 400 if candidate is not None else 409
            raise ApiError(status, "invalid_policy", str(error)) from None
        authorizer = None if policies is None else Authorizer(name, policies)
        return {"keyStore": name, **explain(name, authorizer, asked).as_json()}

    return json_response(await run_blocking(work))


def add_policy_routes(app: web.Application, store_path: str) -> None:
    app.router.add_get(store_path + "/policy", get_policy)
    app.router.add_put(store_path + "/policy", put_policy)
    app.router.add_post(store_path + "/policy/validate", validate_policy)
    app.router.add_post(store_path + "/policy/explain", explain_policy)
