"""The admin API (issue 13 part 1): JSON over HTTP under ``/admin/v1/``, on its own listener.

Every handler runs the same service functions as the CLI (``keymgmt.service.KeyManager`` for
keys, ``credential_service`` for credentials), on a thread since they touch files and databases.
The configuration is read afresh for each request, so the API sees what a reload would; the
token settings (``[admin.auth]``) and the listener are fixed at start. This module holds the
application, its error handling and the health, reload, key store and key endpoints; the
credential (``api_credentials``), imported material (``api_import``), policy
(``api_policies``) and OpenAPI document (``api_docs``) endpoints build on it.

Key-lifecycle actions write the service's own ``keyLifecycle`` audit line with the token's
``sub`` as the actor; every request, refused ones included, also writes one ``adminRequest``
line (who, operation, status). Errors are ``{"error", "message"}``: 400 bad input, 401/403 from
the guard, 404 unknown key store or key, 409 a state that does not allow the action, 503 a key
store that cannot be reached. Nothing reaches the client as a traceback; an unexpected failure is
logged by type and frames (safelog) and answered 500 ``internal_error`` without details.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiohttp import web

from xks_proxy import __version__, credential_service
from xks_proxy.admin.api_docs import add_document_routes
from xks_proxy.admin.http import AUDIT, CALLER, DETAIL, GUARD, AdminGuard, actor_of, requires
from xks_proxy.admin.metrics import AdminMetrics
from xks_proxy.backends.base import DECRYPT, ENCRYPT
from xks_proxy.config import (
    AuditConfig,
    Config,
    KeyStoreConfig,
    load_config,
    require_key_id,
)
from xks_proxy.errors import CommandError, ConfigError
from xks_proxy.keymgmt.audit import LifecycleAudit
from xks_proxy.keymgmt.hsm import lifecycle_keys
from xks_proxy.keymgmt.limits import DEFAULT_DELETION_DAYS
from xks_proxy.keymgmt.service import KeyManager, describe_key
from xks_proxy.keystore.records import (
    ORIGIN_EXTERNAL,
    ORIGIN_PROXY,
    KeyExistsError,
    KeyStateError,
    UnknownKeyError,
)
from xks_proxy.keystore.store import KeyStoreUnavailableError
from xks_proxy.safelog import log_unexpected
from xks_proxy.web.connection import report_to_connection
from xks_proxy.web.responses import json_response

log = logging.getLogger(__name__)
PREFIX = "/admin/v1"
MAX_BODY_BYTES = 64 * 1024
USAGES = frozenset({ENCRYPT, DECRYPT})
ORIGINS = (ORIGIN_PROXY, ORIGIN_EXTERNAL)
T = TypeVar("T")
CONFIG_PATH = web.AppKey("admin_config_path", Path)
# How the API makes the proxy reload (``/reload``, a policy put): SIGHUP to this process, as
# `xks-proxy reload` does (a supervisor passes it on to its workers). Tests put their own.
RELOAD: web.AppKey[Callable[[], None]] = web.AppKey("admin_reload")


def send_sighup() -> None:
    os.kill(os.getpid(), signal.SIGHUP)


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


def _error(status: int, error: str, message: str) -> web.Response:
    return json_response({"error": error, "message": message}, status)


@web.middleware
async def errors_as_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure as the API's JSON error, including aiohttp's own 404/405/413."""
    try:
        return await handler(request)
    except ApiError as error:
        return _error(error.status, error.error, error.message)
    except web.HTTPException as error:
        return _error(error.status, "http_error", error.reason)
    except Exception as error:
        log_unexpected(log, logging.ERROR, f"admin {request.method} {request.path}", error)
        return _error(500, "internal_error", "The request failed; the proxy's log says why.")


class UnknownKeyStoreError(ConfigError):
    """``Config.key_store`` found no such name (a ConfigError there, a 404 here)."""


# Service refusals → (status, error, message format); the first matching class wins, so a
# subclass (KeyStoreUnavailableError is a ConfigError) comes before its base.
REFUSALS: tuple[tuple[type[Exception] | tuple[type[Exception], ...], int, str, str], ...] = (
    (UnknownKeyError, 404, "not_found", "no key {0}"),
    (KeyExistsError, 409, "conflict", "key {0} already exists"),
    ((KeyStateError, CommandError), 409, "conflict", "{0}"),
    (KeyStoreUnavailableError, 503, "unavailable", "{0}"),
    (UnknownKeyStoreError, 404, "not_found", "{0}"),
    ((ConfigError, ValueError), 400, "bad_request", "{0}"),
    ((OSError, sqlite3.Error), 503, "unavailable", "storage failed: {1}"),
)


def _translate(error: Exception) -> ApiError:
    """A service refusal as the API's answer; the messages name ids, never secrets."""
    if isinstance(error, ConfigError) and str(error).startswith("no key store named"):
        error = UnknownKeyStoreError(str(error))
    for kinds, status, name, message in REFUSALS:
        if isinstance(error, kinds):
            return ApiError(status, name, message.format(error, type(error).__name__))
    raise error


async def run_blocking(work: Callable[[], T]) -> T:
    try:
        return await asyncio.to_thread(work)
    except Exception as error:
        raise _translate(error) from None


async def read_json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "bad_request", "the body is not JSON") from None
    if not isinstance(document, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    return document


def json_field(document: dict[str, Any], name: str, kind: type[T], default: T | None = None) -> T:
    value = document.get(name, default)
    if value is None:
        raise ApiError(400, "bad_request", f"{name}: required")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError(400, "bad_request", f"{name}: must be a {kind.__name__}")
    return value


def _config(request: web.Request) -> Config:
    return load_config(request.app[CONFIG_PATH])


def _store(config: Config, name: str) -> KeyStoreConfig:
    return config.key_store(name)


def _describe_store(config_path: Path, store: KeyStoreConfig) -> dict[str, Any]:
    """On a thread: a key store whose credentials live in a shared store counts those too."""
    credentials = (
        len(credential_service.list_credentials(config_path, store.name))
        if store.credentials_backend is not None
        else len(store.credentials)
    )
    return {
        "name": store.name,
        "uriPath": store.uri_path,
        "region": store.region,
        "backend": store.backend,
        "credentials": credentials,
        "credentialsStore": "file" if store.credentials_backend is None else "database",
    }


def _with_keys(request: web.Request, action: Callable[[KeyManager], T]) -> Callable[[], T]:
    """A thread's work: open the key store of the request's key store, act, close it."""
    name = request.match_info["store"]
    actor = actor_of(request[CALLER])

    def work() -> T:
        config = _config(request)
        database = lifecycle_keys(config, config.backends[_store(config, name).backend])
        try:
            return action(KeyManager(database, LifecycleAudit(config.audit), actor))
        finally:
            database.close()

    return work


def _key_id(request: web.Request) -> str:
    key_id = request.match_info["key"]
    try:
        return require_key_id(key_id, "keyId")
    except ConfigError as error:
        raise ApiError(400, "bad_request", str(error)) from None


# --- health and reload ---------------------------------------------------------------------


@requires("health")
async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "version": __version__, "pid": os.getpid()})


@requires("reload")
async def reload(request: web.Request) -> web.Response:
    # The same SIGHUP as `xks-proxy reload`: this process reloads (a supervisor passes it on).
    await run_blocking(lambda: _config(request).check_serving())
    request.app[RELOAD]()
    request[DETAIL] = "SIGHUP sent"
    return json_response({"reload": "requested", "log": "the proxy's log says how it went"}, 202)


# --- key stores ------------------------------------------------------------------------------


@requires("key-stores.list")
async def list_key_stores(request: web.Request) -> web.Response:
    path = request.app[CONFIG_PATH]

    def work() -> list[dict[str, Any]]:
        config = load_config(path, with_backends=False)
        return [_describe_store(path, store) for store in config.key_stores]

    return json_response({"keyStores": await run_blocking(work)})


@requires("key-stores.describe")
async def describe_key_store(request: web.Request) -> web.Response:
    name = request.match_info["store"]

    path = request.app[CONFIG_PATH]

    def work() -> dict[str, Any]:
        return _describe_store(path, _store(load_config(path, with_backends=False), name))

    return json_response(await run_blocking(work))


# --- keys ----------------------------------------------------------------------------------


@requires("keys.list")
async def list_keys(request: web.Request) -> web.Response:
    records = await run_blocking(_with_keys(request, lambda keys: keys.keys()))
    return json_response({"keys": [describe_key(r) for r in records]})


@requires("keys.describe")
async def describe(request: web.Request) -> web.Response:
    key_id = _key_id(request)
    records = await run_blocking(_with_keys(request, lambda keys: keys.keys()))
    for record in records:
        if record.key_id == key_id:
            return json_response(describe_key(record))
    raise ApiError(404, "not_found", f"no key {key_id}")


@requires("keys.create")
async def create_key(request: web.Request) -> web.Response:
    document = await read_json(request)
    key_id = json_field(document, "keyId", str)
    try:
        require_key_id(key_id, "keyId")
    except ConfigError as error:
        raise ApiError(400, "bad_request", str(error)) from None
    usage = json_field(document, "keyUsage", list, [ENCRYPT, DECRYPT])
    if not all(isinstance(u, str) for u in usage) or not set(usage) <= USAGES:
        raise ApiError(400, "bad_request", "keyUsage: a list of ENCRYPT and DECRYPT")
    origin = json_field(document, "origin", str, ORIGIN_PROXY).lower()
    if origin not in ORIGINS:
        raise ApiError(400, "bad_request", "origin: proxy, or external for imported material")
    request[DETAIL] = f"key {key_id}, origin {origin}"
    create = KeyManager.create_external if origin == ORIGIN_EXTERNAL else KeyManager.create
    await run_blocking(_with_keys(request, lambda keys: create(keys, key_id, frozenset(usage))))
    return await _described(request, key_id, 201)


async def _described(request: web.Request, key_id: str, status: int = 200) -> web.Response:
    records = await run_blocking(_with_keys(request, lambda keys: keys.keys()))
    record = next(r for r in records if r.key_id == key_id)
    return json_response(describe_key(record), status)


def _key_action(operation: str, act: Callable[[KeyManager, str], object]) -> Any:
    @requires(operation)
    async def handler(request: web.Request) -> web.Response:
        key_id = _key_id(request)
        request[DETAIL] = f"key {key_id}"
        await run_blocking(_with_keys(request, lambda keys: act(keys, key_id)))
        return await _described(request, key_id)

    return handler


@requires("keys.schedule-deletion")
async def schedule_deletion(request: web.Request) -> web.Response:
    key_id = _key_id(request)
    days = json_field(await read_json(request), "pendingWindowInDays", int, DEFAULT_DELETION_DAYS)
    request[DETAIL] = f"key {key_id}, {days} days"
    await run_blocking(_with_keys(request, lambda keys: keys.schedule_deletion(key_id, days)))
    return await _described(request, key_id)


def _audit_hook(
    config: AuditConfig, metrics: AdminMetrics | None
) -> Callable[[str, str, int, str], None]:
    """One audit line, and one count, per guarded request."""
    audit = LifecycleAudit(config)

    def record(actor: str, operation: str, status: int, detail: str) -> None:
        if metrics is not None:
            metrics.observe(operation, status)
        outcome = "success" if status < 400 else f"refused ({status})"
        try:
            audit.record(
                actor=actor, action=operation, key_id=None, outcome=outcome,
                detail=detail[:300], event="adminRequest",
            )  # fmt: skip
        except OSError as error:
            log.error("admin audit line not written: %s", error.strerror)

    return record


def create_admin_app(
    config: Config, guard: AdminGuard, metrics: AdminMetrics | None = None
) -> web.Application:
    # report_to_connection first: the head timer and the drain see every request, failed or not.
    app = web.Application(
        middlewares=[report_to_connection, errors_as_json], client_max_size=MAX_BODY_BYTES
    )
    app[GUARD] = guard
    app[CONFIG_PATH] = config.path
    app[AUDIT] = _audit_hook(config.audit, metrics)
    app[RELOAD] = send_sighup
    store = PREFIX + "/key-stores/{store}"
    key = store + "/keys/{key}"
    app.router.add_get(PREFIX + "/health", health)
    app.router.add_post(PREFIX + "/reload", reload)
    app.router.add_get(PREFIX + "/key-stores", list_key_stores)
    app.router.add_get(store, describe_key_store)
    app.router.add_get(store + "/keys", list_keys)
    app.router.add_post(store + "/keys", create_key)
    app.router.add_get(key, describe)
    app.router.add_post(key + "/enable", _key_action("keys.enable", KeyManager.enable))
    app.router.add_post(key + "/disable", _key_action("keys.disable", KeyManager.disable))
    app.router.add_post(key + "/rotate", _key_action("keys.rotate", KeyManager.rotate))
    app.router.add_post(key + "/schedule-deletion", schedule_deletion)
    app.router.add_post(
        key + "/cancel-deletion", _key_action("keys.cancel-deletion", KeyManager.cancel_deletion)
    )
    # They build on this module.
    from xks_proxy.admin.api_credentials import add_credential_routes
    from xks_proxy.admin.api_import import add_import_routes
    from xks_proxy.admin.api_policies import add_policy_routes

    add_credential_routes(app, store)
    add_import_routes(app, key)
    add_policy_routes(app, store)
    add_document_routes(app, PREFIX)
    return app
