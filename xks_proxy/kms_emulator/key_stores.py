"""Custom key store operations, with AWS's lifecycle rules for external key stores.

- Create and Update test the proxy configuration they are given (GetHealthStatus with the new
  endpoint, path and credential) before they accept it, as AWS KMS does for public endpoints.
- Update may change the name, the credential and the URI path while CONNECTED or DISCONNECTED;
  the endpoint and the connectivity only while DISCONNECTED (UpdateCustomKeyStore reference).
- Connect answers at once; the store goes through CONNECTING to CONNECTED or FAILED (with a
  ConnectionErrorCode). Connect is refused while DISCONNECTING or FAILED, Disconnect while
  DISCONNECTED or DISCONNECTING (CustomKeyStoreInvalidStateException's documentation).
- The URI path, endpoint and credential rules are the ones the proxy's own configuration uses
  (``xks_proxy.validation``), on create and on update alike. ``http://host:port`` endpoints are
  accepted with a warning unless ``--strict``: AWS requires https on port 443.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from xks_proxy import validation
from xks_proxy.kms_emulator import errors
from xks_proxy.kms_emulator.core import Context, Core, Params
from xks_proxy.kms_emulator.errors import KmsError, ProxyCallError
from xks_proxy.kms_emulator.shapes import page, service_model
from xks_proxy.kms_emulator.state import ConnectionState, KeyStore

log = logging.getLogger(__name__)
EXTERNAL_KEY_STORE = "EXTERNAL_KEY_STORE"
PUBLIC_ENDPOINT = "PUBLIC_ENDPOINT"
_CHANGES_WHILE_CONNECTED = (
    "NewCustomKeyStoreName",
    "XksProxyAuthenticationCredential",
    "XksProxyUriPath",
)
_CLOUDHSM_ONLY = ("KeyStorePassword", "CloudHsmClusterId")


def _model_pattern(shape: str) -> str:
    return str(service_model()["shapes"][shape]["pattern"])


def _checked_endpoint(core: Core, endpoint: str) -> str:
    if validation.endpoint_problem(endpoint, allow_local=not core.strict):
        raise errors.constraint(
            endpoint,
            "xksProxyUriEndpoint",
            f"satisfy regular expression pattern: {_model_pattern('XksProxyUriEndpointType')}",
        )
    if validation.endpoint_problem(endpoint, allow_local=False):
        log.warning(
            "XksProxyUriEndpoint %s: AWS KMS requires https:// on port 443 "
            "(accepted here; --strict refuses it)",
            endpoint,
        )
    return endpoint


def _checked_uri_path(uri_path: str) -> str:
    if validation.uri_path_problem(uri_path, any_version=True):
        raise errors.constraint(
            uri_path,
            "xksProxyUriPath",
            f"satisfy regular expression pattern: {_model_pattern('XksProxyUriPathType')}",
        )
    return uri_path


def _checked_credential(credential: dict[str, Any]) -> tuple[str, str]:
    access_key_id = credential["AccessKeyId"]
    secret = credential["RawSecretAccessKey"]
    where = "xksProxyAuthenticationCredential"
    if validation.access_key_id_problem(access_key_id):
        raise errors.constraint(
            None, f"{where}.accessKeyId", "satisfy regular expression pattern: ^[A-Z2-7]+$"
        )
    if validation.secret_problem(secret):
        raise errors.constraint(
            None,
            f"{where}.rawSecretAccessKey",
            "satisfy regular expression pattern: ^[a-zA-Z0-9\\/+=]+$",
        )
    return access_key_id, secret


def _required(params: Params, name: str) -> Any:
    if params.get(name) is None:
        raise errors.constraint(None, name[:1].lower() + name[1:], "not be null")
    return params[name]


def _check_unique(core: Core, store: KeyStore, ctx: Context) -> None:
    for other in core.stores(ctx):
        if other.id == store.id:
            continue
        if other.name == store.name:
            raise KmsError(
                "CustomKeyStoreNameInUseException",
                f"Custom key store name '{store.name}' is already in use.",
            )
        if (other.endpoint, other.uri_path) == (store.endpoint, store.uri_path):
            raise KmsError(
                "XksProxyUriInUseException",
                "The combination of the XksProxyUriEndpoint and XksProxyUriPath is already in "
                "use by another external key store in this account and Region.",
            )


async def _test_proxy(core: Core, store: KeyStore, ctx: Context, operation: str) -> None:
    try:
        await core.xks.health(core.proxy(store, ctx), operation, ctx.request_id)
    except ProxyCallError as error:
        raise errors.for_key_store_operation(error) from None


async def create(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    if params.get("CustomKeyStoreType", "AWS_CLOUDHSM") != EXTERNAL_KEY_STORE:
        raise KmsError(
            "UnsupportedOperationException",
            "The emulator supports only EXTERNAL_KEY_STORE key stores.",
        )
    if _required(params, "XksProxyConnectivity") != PUBLIC_ENDPOINT:
        raise KmsError(
            "UnsupportedOperationException",
            "The emulator supports only PUBLIC_ENDPOINT connectivity.",
        )
    access_key_id, secret = _checked_credential(
        _required(params, "XksProxyAuthenticationCredential")
    )
    store = KeyStore(
        id=f"cks-{uuid.uuid4().hex[:17]}",
        name=params["CustomKeyStoreName"],
        endpoint=_checked_endpoint(core, _required(params, "XksProxyUriEndpoint")),
        uri_path=_checked_uri_path(_required(params, "XksProxyUriPath")),
        access_key_id=access_key_id,
        secret=secret,
        created=time.time(),
        region=ctx.region,
    )
    _check_unique(core, store, ctx)
    await _test_proxy(core, store, ctx, "CreateCustomKeyStore")
    core.state.save_key_store(store)
    return {"CustomKeyStoreId": store.id}


def _describe(store: KeyStore) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "CustomKeyStoreId": store.id,
        "CustomKeyStoreName": store.name,
        "ConnectionState": store.state.value,
        "CreationDate": store.created,
        "CustomKeyStoreType": EXTERNAL_KEY_STORE,
        "XksProxyConfiguration": {
            "Connectivity": store.connectivity,
            "AccessKeyId": store.access_key_id,
            "UriEndpoint": store.endpoint,
            "UriPath": store.uri_path,
        },
    }
    if store.error_code:
        entry["ConnectionErrorCode"] = store.error_code
    return entry


async def describe(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    stores = core.stores(ctx)
    if params.get("CustomKeyStoreId"):
        stores = [core.store(params["CustomKeyStoreId"], ctx)]
    elif params.get("CustomKeyStoreName"):
        stores = [s for s in stores if s.name == params["CustomKeyStoreName"]]
        if not stores:
            raise errors.key_store_not_found(params["CustomKeyStoreName"])
    shown, more = page(stores, params, default_limit=1000)
    return {"CustomKeyStores": [_describe(s) for s in shown], **more}


async def connect(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    store = core.store(params["CustomKeyStoreId"], ctx)
    if store.state in (ConnectionState.CONNECTED, ConnectionState.CONNECTING):
        return {}
    if store.state != ConnectionState.DISCONNECTED:
        raise KmsError(
            "CustomKeyStoreInvalidStateException",
            f"Custom key store '{store.id}' is {store.state}: disconnect it, then connect it.",
        )
    store.state, store.error_code = ConnectionState.CONNECTING, None
    core.state.save_key_store(store)
    core.in_background(_connect(core, store, ctx))
    return {}


async def _connect(core: Core, store: KeyStore, ctx: Context) -> None:
    error_code = None
    try:
        await core.xks.health(core.proxy(store, ctx), "ConnectCustomKeyStore", ctx.request_id)
    except ProxyCallError as error:
        error_code = errors.CONNECTION_ERROR_CODES.get(error.failure, "XKS_PROXY_INVALID_RESPONSE")
    current = core.state.key_stores.get(store.id)
    if current is None or current.state != ConnectionState.CONNECTING:
        return  # disconnected or deleted while the proxy was being checked: that wins
    current.state = ConnectionState.FAILED if error_code else ConnectionState.CONNECTED
    current.error_code = error_code
    core.state.save_key_store(current)


async def disconnect(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    store = core.store(params["CustomKeyStoreId"], ctx)
    if store.state in (ConnectionState.DISCONNECTED, ConnectionState.DISCONNECTING):
        raise KmsError(
            "CustomKeyStoreInvalidStateException",
            f"Custom key store '{store.id}' is already {store.state}.",
        )
    store.state = ConnectionState.DISCONNECTING
    core.state.save_key_store(store)
    store.state, store.error_code = ConnectionState.DISCONNECTED, None
    core.state.save_key_store(store)
    return {}


def _check_update_state(store: KeyStore, params: Params) -> None:
    # A parameter that repeats the current value changes nothing (tools resend whole configs).
    current = {"XksProxyUriEndpoint": store.endpoint, "XksProxyConnectivity": store.connectivity}
    changes = [
        name
        for name in params
        if name != "CustomKeyStoreId"
        and params[name] is not None
        and params[name] != current.get(name)
    ]
    needing_disconnect = [name for name in changes if name not in _CHANGES_WHILE_CONNECTED]
    allowed = (ConnectionState.CONNECTED, ConnectionState.DISCONNECTED)
    if (needing_disconnect and store.state != ConnectionState.DISCONNECTED) or (
        store.state not in allowed
    ):
        raise KmsError(
            "CustomKeyStoreInvalidStateException",
            f"Custom key store '{store.id}' is {store.state}: disconnect it to change "
            f"{', '.join(needing_disconnect or changes)}.",
        )


async def update(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    store = core.store(params["CustomKeyStoreId"], ctx)
    for name in _CLOUDHSM_ONLY:
        if params.get(name) is not None:
            raise errors.validation(f"{name} is valid only for an AWS_CLOUDHSM key store.")
    if (
        params.get("XksProxyVpcEndpointServiceName") is not None
        or params.get("XksProxyConnectivity", PUBLIC_ENDPOINT) != PUBLIC_ENDPOINT
    ):
        raise KmsError(
            "UnsupportedOperationException",
            "The emulator supports only PUBLIC_ENDPOINT connectivity.",
        )
    _check_update_state(store, params)
    updated = KeyStore(**{**store.__dict__})
    if params.get("NewCustomKeyStoreName") is not None:
        updated.name = params["NewCustomKeyStoreName"]
    if params.get("XksProxyUriEndpoint") is not None:
        updated.endpoint = _checked_endpoint(core, params["XksProxyUriEndpoint"])
    if params.get("XksProxyUriPath") is not None:
        updated.uri_path = _checked_uri_path(params["XksProxyUriPath"])
    if params.get("XksProxyAuthenticationCredential") is not None:
        updated.access_key_id, updated.secret = _checked_credential(
            params["XksProxyAuthenticationCredential"]
        )
    _check_unique(core, updated, ctx)
    proxy_changed = (updated.endpoint, updated.uri_path, updated.access_key_id, updated.secret) != (
        store.endpoint,
        store.uri_path,
        store.access_key_id,
        store.secret,
    )
    if proxy_changed:
        await _test_proxy(core, updated, ctx, "UpdateCustomKeyStore")
    core.state.save_key_store(updated)
    return {}


async def delete(core: Core, params: Params, ctx: Context) -> dict[str, Any]:
    store = core.store(params["CustomKeyStoreId"], ctx)
    if store.state != ConnectionState.DISCONNECTED:
        raise KmsError(
            "CustomKeyStoreInvalidStateException",
            "Disconnect the custom key store before deleting it.",
        )
    if any(key.key_store_id == store.id for key in core.state.keys.values()):
        raise KmsError(
            "CustomKeyStoreHasCMKsException",
            "Delete the KMS keys in the custom key store first (keys pending deletion count "
            "until they are deleted).",
        )
    core.state.delete_key_store(store.id)
    return {}
