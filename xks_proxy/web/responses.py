"""The JSON answers of the XKS API, shared by the endpoint and the HTTP protocol handler."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from xks_proxy.errors import XksError


def json_response(document: dict[str, Any], status: int = 200) -> web.Response:
    # Compact single-line JSON, as real XKS clients expect (xks-spec §7.4).
    return web.Response(body=orjson.dumps(document), status=status, content_type="application/json")


def error_json(error: XksError) -> web.Response:
    """The spec's error body (xks-spec §7.1) with the error's HTTP status."""
    return json_response(
        {"errorName": error.error_name, "errorMessage": error.message}, error.http_status
    )
