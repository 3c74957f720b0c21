"""The admin API's imported key material (BYOK, ``keymgmt/byok.py``), modelled on KMS's
GetParametersForImport, ImportKeyMaterial and DeleteImportedKeyMaterial; the key itself is made
by ``POST …/keys`` with ``"origin": "external"``.

- ``POST …/keys/{key}/import-parameters`` ``{"wrappingAlgorithm", "wrappingKeySpec"}`` (spec
  default RSA_2048) → ``{"keyId", "publicKey", "importToken", "parametersValidTo"}``. Unlike
  KMS's base64 DER, ``publicKey`` is PEM: what ``openssl pkeyutl -pubin`` reads, and what
  ``keys import-parameters`` writes to ``wrapping-key.pem``.
- ``POST …/keys/{key}/import-material`` ``{"encryptedKeyMaterial": base64, "importToken",
  "validTo"?}`` → the key as ``GET`` shows it. ``validTo`` is an ISO 8601 instant with a zone.
- ``POST …/keys/{key}/delete-material`` → the key, DISABLED until the same material is imported.

The import token is a credential of sorts (it unlocks a wrapping key once); it is answered once,
never logged, and the audit line says only when it expires. Refusals carry the CLI's messages:
400 for a token, material or field that is not acceptable, 404 for an unknown key, 409 for a key
that is not external, has other material or no material to delete.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from xks_proxy.admin.api import (
    ApiError,
    _described,
    _key_action,
    _key_id,
    _with_keys,
    json_field,
    read_json,
    run_blocking,
)
from xks_proxy.admin.http import DETAIL, requires
from xks_proxy.errors import ConfigError
from xks_proxy.keymgmt.byok import ImportParameters, parse_valid_to
from xks_proxy.keymgmt.limits import DEFAULT_WRAPPING_KEY_SPEC
from xks_proxy.keymgmt.service import KeyManager
from xks_proxy.web.responses import json_response

# An RSA-4096 block plus an AES-wrapped 32-byte key, with room to spare; base64 of it.
MAX_WRAPPED_BYTES = 4096
MAX_TOKEN_CHARS = 4096


@requires("keys.import-parameters")
async def import_parameters(request: web.Request) -> web.Response:
    key_id = _key_id(request)
    document = await read_json(request)
    algorithm = json_field(document, "wrappingAlgorithm", str)
    spec = json_field(document, "wrappingKeySpec", str, DEFAULT_WRAPPING_KEY_SPEC)
    request[DETAIL] = f"key {key_id}, {algorithm[:40]} with {spec[:20]}"
    parameters: ImportParameters = await run_blocking(
        _with_keys(request, lambda keys: keys.import_parameters(key_id, algorithm, spec))
    )
    return json_response(
        {
            "keyId": key_id,
            "publicKey": parameters.public_key_pem.decode("ascii"),
            "importToken": parameters.token,
            "parametersValidTo": parameters.expires_at.isoformat(),
        }
    )


def _wrapped_material(text: str) -> bytes:
    try:
        wrapped = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "bad_request", "encryptedKeyMaterial: not base64") from None
    if not wrapped or len(wrapped) > MAX_WRAPPED_BYTES:
        raise ApiError(400, "bad_request", f"encryptedKeyMaterial: 1 to {MAX_WRAPPED_BYTES} bytes")
    return wrapped


def _valid_to(document: dict[str, Any]) -> datetime | None:
    if document.get("validTo") is None:
        return None
    try:
        return parse_valid_to(json_field(document, "validTo", str), "validTo")
    except ConfigError as error:
        raise ApiError(400, "bad_request", str(error)) from None


@requires("keys.import-material")
async def import_material(request: web.Request) -> web.Response:
    key_id = _key_id(request)
    document = await read_json(request)
    wrapped = _wrapped_material(json_field(document, "encryptedKeyMaterial", str))
    token = json_field(document, "importToken", str)
    if len(token) > MAX_TOKEN_CHARS:
        raise ApiError(400, "bad_request", f"importToken: at most {MAX_TOKEN_CHARS} characters")
    valid_to = _valid_to(document)
    request[DETAIL] = f"key {key_id}, " + (
        f"valid to {valid_to.astimezone(UTC).isoformat()}" if valid_to else "no expiry"
    )
    await run_blocking(
        _with_keys(request, lambda keys: keys.import_material(key_id, wrapped, token, valid_to))
    )
    return await _described(request, key_id)


def add_import_routes(app: web.Application, key_path: str) -> None:
    app.router.add_post(key_path + "/import-parameters", import_parameters)
    app.router.add_post(key_path + "/import-material", import_material)
    app.router.add_post(
        key_path + "/delete-material",
        _key_action("keys.delete-material", KeyManager.delete_material),
    )
