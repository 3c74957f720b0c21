"""The admin API's SigV4 credentials of a key store: list (never a secret), create, add, revoke.

The handlers run ``credential_service``, the functions under ``xks-proxy credentials``, so the
credentials file or, with ``credentials_store = "database"``, the shared key store is changed
exactly as the CLI changes it (and audited by it).

- ``GET …/credentials`` → ``{"credentials": [{"keyStore", "accessKeyId", "origin"}]}``.
- ``POST …/credentials`` → 201 with the new ``AccessKeyId`` and ``RawSecretAccessKey``: the one
  answer that carries a secret (KMS needs it), never shown again.
- ``PUT …/credentials/{access_key_id}`` ``{"secretAccessKey"}`` → 201 added, 200 when the key
  store has it already with that secret (a fleet rotation installs a given credential).
- ``DELETE …/credentials/{access_key_id}[?force=true]`` → revoked; the last credential of a key
  store only with ``force``.
"""

from __future__ import annotations

from aiohttp import web

from xks_proxy import credential_service
from xks_proxy.admin.api import CONFIG_PATH, json_field, read_json, run_blocking
from xks_proxy.admin.http import DETAIL, requires
from xks_proxy.web.responses import json_response


@requires("credentials.list")
async def list_credentials(request: web.Request) -> web.Response:
    name = request.match_info["store"]
    rows = await run_blocking(
        lambda: credential_service.list_credentials(request.app[CONFIG_PATH], name)
    )
    return json_response(
        {
            "credentials": [
                {"keyStore": r.key_store, "accessKeyId": r.access_key_id, "origin": r.origin}
                for r in rows
            ]
        }
    )


@requires("credentials.create")
async def create_credential(request: web.Request) -> web.Response:
    name = request.match_info["store"]
    store, entry = await run_blocking(
        lambda: credential_service.create(request.app[CONFIG_PATH], name)
    )
    request[DETAIL] = f"key store {store.name}, access key id {entry.access_key_id}"
    # The one answer that carries a secret: KMS needs it, and it is never shown again.
    return json_response(
        {
            "keyStore": store.name,
            "uriPath": store.uri_path,
            "AccessKeyId": entry.access_key_id,
            "RawSecretAccessKey": entry.secret_access_key,
        },
        201,
    )


@requires("credentials.add")
async def add_credential(request: web.Request) -> web.Response:
    name = request.match_info["store"]
    access_key_id = request.match_info["access_key_id"]
    secret = json_field(await read_json(request), "secretAccessKey", str)
    request[DETAIL] = f"key store {name}, access key id {access_key_id}"
    store, added = await run_blocking(
        lambda: credential_service.add(request.app[CONFIG_PATH], name, access_key_id, secret)
    )
    return json_response(
        {"keyStore": store, "accessKeyId": access_key_id, "added": added}, 201 if added else 200
    )


@requires("credentials.revoke")
async def revoke_credential(request: web.Request) -> web.Response:
    name = request.match_info["store"]
    access_key_id = request.match_info["access_key_id"]
    force = request.query.get("force", "false").lower() == "true"
    request[DETAIL] = f"key store {name}, access key id {access_key_id}"
    store = await run_blocking(
        lambda: credential_service.revoke(request.app[CONFIG_PATH], name, access_key_id, force)
    )
    return json_response({"keyStore": store, "accessKeyId": access_key_id, "revoked": True})


def add_credential_routes(app: web.Application, store_path: str) -> None:
    credential = store_path + "/credentials/{access_key_id}"
    app.router.add_get(store_path + "/credentials", list_credentials)
    app.router.add_post(store_path + "/credentials", create_credential)
    app.router.add_put(credential, add_credential)
    app.router.add_delete(credential, revoke_credential)
