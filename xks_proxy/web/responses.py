"""The JSON answers of the XKS API, shared by the endpoint and the HTTP protocol handler.

The endpoint decides an ``Answer`` (status, JSON body, whether the connection closes after it);
it becomes aiohttp's Response on the routed path (``Answer.response``) or the same bytes written
straight to the transport on the inline path (web/inline.py, ``encode_answer``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from xks_proxy.errors import XksError

JSON = "application/json"


@dataclass(slots=True)
class Answer:
    status: int
    # Compact single-line JSON, as real XKS clients expect (xks-spec §7.4).
    body: bytes
    # The connection closes after this answer (part of the body may be unread, or draining).
    close: bool = False
    # The Allow header of a 405.
    allow: str | None = None

    def response(self) -> web.Response:
        response = web.Response(body=self.body, status=self.status, content_type=JSON)
        if self.allow is not None:
            response.headers["Allow"] = self.allow
        if self.close:
            response.force_close()
        return response


def json_answer(document: dict[str, Any], status: int = 200) -> Answer:
    return Answer(status, orjson.dumps(document))


def error_answer(error: XksError) -> Answer:
    """The spec's error body (xks-spec §7.1) with the error's HTTP status."""
    return json_answer(
        {"errorName": error.error_name, "errorMessage": error.message}, error.http_status
    )


def json_response(document: dict[str, Any], status: int = 200) -> web.Response:
    return json_answer(document, status).response()


def error_json(error: XksError) -> web.Response:
    return error_answer(error).response()
