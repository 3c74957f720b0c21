"""The emulator's HTTP side: the AWS JSON 1.1 protocol that boto3 and the aws CLI speak.

``POST /`` with ``X-Amz-Target: TrentService.<Operation>``. Any SigV4 credentials are accepted;
the access key id and region in the signature's scope name the caller and the region (the
region is also the one the emulator signs proxy requests with). Errors are
``{"__type": <exception>, "message": ...}``, which botocore raises as ``ClientError``.

``--seed FILE`` creates key stores, keys and aliases at start-up (idempotently, by name and
alias), for reproducible test set-ups::

    {"custom_key_stores": [{"name": "dev", "endpoint": "http://127.0.0.1:8080",
                            "uri_path": "/keystores/dev/kms/xks/v1",
                            "access_key_id": "...", "secret_access_key": "...",
                            "connect": true}],
     "keys": [{"alias": "alias/app", "custom_key_store": "dev", "xks_key_id": "key-1"},
              {"alias": "alias/local"}]}
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from xks_proxy.kms_emulator.errors import KmsError
from xks_proxy.kms_emulator.key_stores import EXTERNAL_KEY_STORE, PUBLIC_ENDPOINT
from xks_proxy.kms_emulator.service import Context, KmsEmulator
from xks_proxy.kms_emulator.state import ConnectionState

log = logging.getLogger(__name__)
EMULATOR_KEY = web.AppKey("kms_emulator", KmsEmulator)
CONTENT_TYPE = "application/x-amz-json-1.1"
_SCOPE = re.compile(r"Credential=([^/,\s]+)/\d{8}/([a-z0-9-]+)/")


def _answer(document: Any, request_id: str, status: int = 200) -> web.Response:
    # botocore reads the request id from this header (ResponseMetadata.RequestId).
    return web.Response(
        body=orjson.dumps(document),
        status=status,
        content_type=CONTENT_TYPE,
        headers={"x-amzn-RequestId": request_id},
    )


def _error(error: KmsError, request_id: str) -> web.Response:
    return _answer({"__type": error.code, "message": error.message}, request_id, error.status)


async def handle(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR_KEY]
    request_id = str(uuid.uuid4())
    target = request.headers.get("X-Amz-Target", "")
    service, _, operation = target.partition(".")
    if service != "TrentService":
        return _error(
            KmsError("UnknownOperationException", f"Unknown operation {target}"), request_id
        )
    scope = _SCOPE.search(request.headers.get("Authorization", ""))
    if scope is None:
        return _error(
            KmsError(
                "MissingAuthenticationTokenException", "Request is missing Authentication Token"
            ),
            request_id,
        )
    context = Context(
        region=scope.group(2),
        account=emulator.account,
        access_key_id=scope.group(1),
        request_id=request_id,
        source_ip=request.remote or "",
        user_agent=request.headers.get("User-Agent", ""),
        event_id=str(uuid.uuid4()),
    )
    try:
        raw = await request.read()
        params = orjson.loads(raw) if raw else {}
        if not isinstance(params, dict):
            raise KmsError("SerializationException", "The request body must be a JSON object")
        result = await emulator.call(operation, params, context)
    except orjson.JSONDecodeError:
        return _error(
            KmsError("SerializationException", "The request body is not valid JSON"), request_id
        )
    except KmsError as error:
        return _error(error, request_id)
    except Exception:
        log.exception("%s failed", operation)
        return _error(
            KmsError("KMSInternalException", "An internal error occurred.", 500), request_id
        )
    return _answer(result, request_id)


def create_app(emulator: KmsEmulator) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    app[EMULATOR_KEY] = emulator
    app.router.add_post("/", handle)

    async def lifetime(app: web.Application) -> Any:
        yield
        await emulator.close()
        await emulator.xks.close()
        emulator.state.close()

    app.cleanup_ctx.append(lifetime)
    return app


async def apply_seed(emulator: KmsEmulator, path: Path, region: str) -> None:
    """Create what the seed file describes and is not there yet."""
    seed = json.loads(path.read_text())
    context = Context(region=region, account=emulator.account, access_key_id="SEED")
    names = {s.name: s.id for s in emulator.state.key_stores.values() if s.region == region}
    for entry in seed.get("custom_key_stores", []):
        if entry["name"] not in names:
            created = await emulator.call(
                "CreateCustomKeyStore",
                {
                    "CustomKeyStoreName": entry["name"],
                    "CustomKeyStoreType": EXTERNAL_KEY_STORE,
                    "XksProxyUriEndpoint": entry["endpoint"],
                    "XksProxyUriPath": entry["uri_path"],
                    "XksProxyAuthenticationCredential": {
                        "AccessKeyId": entry["access_key_id"],
                        "RawSecretAccessKey": entry["secret_access_key"],
                    },
                    "XksProxyConnectivity": PUBLIC_ENDPOINT,
                },
                context,
            )
            names[entry["name"]] = created["CustomKeyStoreId"]
        store = emulator.state.key_stores[names[entry["name"]]]
        if entry.get("connect") and store.state == ConnectionState.DISCONNECTED:
            await emulator.call("ConnectCustomKeyStore", {"CustomKeyStoreId": store.id}, context)
            while emulator.state.key_stores[store.id].state == ConnectionState.CONNECTING:
                await asyncio.sleep(0.02)
    for entry in seed.get("keys", []):
        alias = entry.get("alias")
        if alias and (region, alias) in emulator.state.aliases:
            continue
        params: dict[str, Any] = {"Description": entry.get("description", "")}
        if entry.get("custom_key_store"):
            params.update(
                Origin=EXTERNAL_KEY_STORE,
                XksKeyId=entry["xks_key_id"],
                CustomKeyStoreId=names[entry["custom_key_store"]],
            )
        created_key = await emulator.call("CreateKey", params, context)
        if alias:
            await emulator.call(
                "CreateAlias",
                {"AliasName": alias, "TargetKeyId": created_key["KeyMetadata"]["KeyId"]},
                context,
            )
