"""The OpenAPI 3.1 documents of the proxy's two APIs, kept here as package data.

``admin.json`` describes the admin API (``admin/``), ``xks.json`` the XKS API that KMS calls
(``web/endpoint.py``). The admin listener serves them (``admin/api_docs.py``); the tests check
that the admin document and the admin app's routes agree both ways and run schemathesis against
both documents on a real proxy (tests/test_openapi*.py). Adding an admin endpoint means adding
its path here: the shared parameters, responses and schemas under ``components`` make that a
few lines.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import orjson

ADMIN = "admin.json"
XKS = "xks.json"


def document_bytes(name: str) -> bytes:
    """The document ``name`` (``ADMIN`` or ``XKS``) as stored in the package."""
    return files(__name__).joinpath(name).read_bytes()


def document(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(document_bytes(name))
    return loaded
