"""The benchmark's floor of this design: a minimal aiohttp handler doing only the essential work.

SigV4 verification (the project's ``sigv4``), orjson parse, strict Base64 with pybase64,
AES-GCM with the spec's EKM_AAD (the software backend's ``seal``/``unseal``) and an orjson
answer; no metrics, no audit, no deadline, no validation beyond what the crypto needs. The
proxy's distance to this server is what its production features cost.

``python -m tools.minimal_server PORT CONFIG KEY_ID`` (CONFIG: an ``xks-proxy init`` deployment
on the software backend).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pybase64
from aiohttp import web

from xks_proxy import sigv4
from xks_proxy.backends.base import SealedData
from xks_proxy.backends.software import SoftwareBackend, seal, unseal
from xks_proxy.config import SoftwareBackendConfig, load_config


def _b64(value: str) -> bytes:
    decoded = pybase64.b64decode(value, validate=True)
    if pybase64.b64encode(decoded) != value.encode("ascii"):
        raise ValueError("not canonical")
    return decoded


def _text(data: bytes) -> str:
    return pybase64.b64encode(data).decode("ascii")


async def create(config_path: Path, key_id: str) -> web.Application:
    config = load_config(config_path)
    store = config.key_stores[0]
    backend_config = config.backends[store.backend]
    assert isinstance(backend_config, SoftwareBackendConfig)
    backend = SoftwareBackend(backend_config)
    await backend.open()
    key = backend._key(key_id)  # a benchmark helper, not the proxy
    cipher = await backend._unseal_version(key, key.newest_version)  # its one version
    credentials = {c.access_key_id: c for c in store.credentials}
    metadata = {"keySpec": "AES_256", "keyUsage": ["DECRYPT", "ENCRYPT"], "keyStatus": "ENABLED"}
    health = {"xksProxyFleetSize": 1, "xksProxyVendor": "x", "xksProxyModel": "x",
              "ekmVendor": "x", "ekmFleetDetails": []}  # fmt: skip

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        sigv4.verify(method=request.method, path=request.rel_url.raw_path,
                     headers=request.headers.items(), body=body, credentials=credentials,
                     region=store.region, now=datetime.now(UTC))  # fmt: skip
        document = orjson.loads(body)
        action = request.path.rsplit("/", 1)[1]
        answer: dict[str, Any]
        if action == "encrypt":
            aad = document.get("additionalAuthenticatedData")
            sealed = seal(cipher, key.newest_version, _b64(document["plaintext"]),
                          _b64(aad) if aad else None)  # fmt: skip
            answer = {"ciphertext": _text(sealed.ciphertext), "initializationVector":
                      _text(sealed.iv), "authenticationTag": _text(sealed.tag),
                      "ciphertextMetadata": _text(sealed.ciphertext_metadata or b"")}  # fmt: skip
        elif action == "decrypt":
            aad = document.get("additionalAuthenticatedData")
            sealed = SealedData(_b64(document["ciphertext"]),
                                _b64(document["initializationVector"]),
                                _b64(document["authenticationTag"]),
                                _b64(document["ciphertextMetadata"]))  # fmt: skip
            answer = {"plaintext": _text(unseal(cipher, sealed, _b64(aad) if aad else None))}
        else:
            answer = metadata if action == "metadata" else health
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    return app


if __name__ == "__main__":
    port, config_file, key = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    web.run_app(create(config_file, key), host="127.0.0.1", port=port, access_log=None, print=None)
