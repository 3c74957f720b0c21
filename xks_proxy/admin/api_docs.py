"""The admin API's OpenAPI documents: ``GET /admin/v1/openapi.json`` (this API) and ``GET
/admin/v1/openapi/xks.json`` (the XKS API on the XKS port), both as kept in the package
(``xks_proxy/openapi/``).

Both need a token with the read permission (every role has it), like every other admin
endpoint: the listener has one rule, a verified token and an audit line for every request, with
no exception to get wrong. Nothing is lost to the tokenless: the documents are the ones in the
repository and in the installed package, and say nothing about a deployment (no key store
names, paths or keys).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from xks_proxy import openapi
from xks_proxy.admin.http import requires


def _document(name: str, operation: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    # Read once when the app is made: the bytes as stored, so the answer is the repository's file.
    body = openapi.document_bytes(name)

    @requires(operation)
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    return handler


def add_document_routes(app: web.Application, prefix: str) -> None:
    app.router.add_get(prefix + "/openapi.json", _document(openapi.ADMIN, "openapi.admin"))
    app.router.add_get(prefix + "/openapi/xks.json", _document(openapi.XKS, "openapi.xks"))
