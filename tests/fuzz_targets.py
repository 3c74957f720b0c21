"""Fuzz targets and input strategies shared by the property tests and ``make fuzz``.

A target runs one input through the code that parses untrusted bytes (the request-body parsers
of ``model``, SigV4 verification) and lets only the project's own errors (``XksError``) pass as
an answer; any other exception escapes and fails the run. The strategies start from valid,
correctly signed requests and break them in the ways the issue-9 campaign did (non-ASCII and
undecodable text, repeated headers and fields, Base64 and JSON edge cases), so most inputs get
past the first check instead of dying on it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st

from xks_proxy import model, sigv4
from xks_proxy.errors import XksError

PARSERS: dict[str, Callable[[dict[str, Any]], object]] = {
    "health": model.parse_health,
    "metadata": model.parse_key_metadata,
    "encrypt": model.parse_encrypt,
    "decrypt": model.parse_decrypt,
}

CREDENTIAL = sigv4.Credential("AKIAI2SFODNN7EXAMPLE", "FYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE")
REGION = "us-east-2"
PATH = "/keystores/dev/kms/xks/v1/keys/key-1/encrypt"
NOW = datetime(2022, 11, 10, 12, 0, 0, tzinfo=UTC)
BODY = b'{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"Encrypt"}}'


def parse_body(operation: str, body: bytes) -> object | None:
    """One request body through ``load_json_object`` and the operation's parser."""
    try:
        return PARSERS[operation](model.load_json_object(body))
    except XksError:
        return None


def verify_request(
    headers: list[tuple[str, str]], *, path: str = PATH, query: str = "", body: bytes = BODY
) -> sigv4.Credential | None:
    """One request through ``sigv4.verify``; None when it was refused."""
    try:
        return sigv4.verify(
            method="POST",
            path=path,
            query=query,
            headers=headers,
            body=body,
            credentials={CREDENTIAL.access_key_id: CREDENTIAL},
            region=REGION,
            now=NOW,
        )
    except XksError:
        return None


def signed_headers(body: bytes = BODY, path: str = PATH) -> list[tuple[str, str]]:
    headers = sigv4.sign(
        method="POST",
        path=path,
        headers={"Host": "xks.example.com", "Content-Type": "application/json"},
        body=body,
        credential=CREDENTIAL,
        region=REGION,
        now=NOW,
        signed_headers=("content-type", "host", "x-amz-date"),
    )
    return list(headers.items())


# Text as aiohttp hands it over: any Unicode, plus surrogateescape'd bytes and lone surrogates.
wire_text = st.text(
    alphabet=st.characters(codec=None, exclude_categories=()),
    max_size=80,
) | st.binary(max_size=80).map(lambda b: b.decode("utf-8", "surrogateescape"))

_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
base64_like = st.one_of(
    st.binary(max_size=48).map(lambda b: base64.b64encode(b).decode()),
    st.text(alphabet=_B64_ALPHABET + "=-_ \n\t", max_size=40),
    st.binary(max_size=48).map(lambda b: base64.b64encode(b).decode().rstrip("=")),
    st.binary(max_size=48).map(lambda b: base64.b64encode(b).decode() + "="),
    wire_text,
)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | wire_text
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)

_FIELDS = (
    "plaintext",
    "ciphertext",
    "additionalAuthenticatedData",
    "initializationVector",
    "authenticationTag",
    "ciphertextMetadata",
    "encryptionAlgorithm",
    "ciphertextDataIntegrityValueAlgorithm",
)
_METADATA_FIELDS = ("kmsRequestId", "kmsOperation", "awsPrincipalArn", "kmsKeyArn")


def _valid_document(plaintext: bytes) -> dict[str, Any]:
    encoded = base64.b64encode(plaintext).decode()
    return {
        "requestMetadata": {
            "kmsRequestId": "r",
            "kmsOperation": "Encrypt",
            "awsPrincipalArn": "arn:aws:iam::1:user/a",
            "kmsKeyArn": "arn:aws:kms:us-east-2:1:key/k",
        },
        "plaintext": encoded,
        "ciphertext": encoded,
        "encryptionAlgorithm": "AES_GCM",
        "initializationVector": base64.b64encode(b"i" * 12).decode(),
        "authenticationTag": base64.b64encode(b"t" * 16).decode(),
    }


@st.composite
def request_bodies(draw: st.DrawFn) -> bytes:
    """Bodies close to valid: fields replaced, dropped, duplicated; or any bytes at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=256))
    document = _valid_document(draw(st.binary(max_size=32)))
    for _ in range(draw(st.integers(0, 3))):
        target = draw(st.sampled_from(("top", "metadata")))
        node = document if target == "top" else document["requestMetadata"]
        names = _FIELDS if target == "top" else _METADATA_FIELDS
        name = draw(st.sampled_from(names))
        action = draw(st.sampled_from(("base64", "json", "drop")))
        if action == "drop":
            node.pop(name, None)
        else:
            node[name] = draw(base64_like if action == "base64" else json_values)
    if draw(st.integers(0, 4)) == 0:
        document["requestMetadata"] = draw(st.sampled_from(("x", None, 0, "{}", "[]")))
    text = json.dumps(document, ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()):
        # Name a member twice, textually: no dict can hold that.
        name = draw(st.sampled_from(("plaintext", "requestMetadata", "kmsRequestId")))
        text = text.replace(f'"{name}"', f'"{name}": 1, "{name}"', 1)
    return text.encode("utf-8", "surrogatepass")


_AUTH_EDITS = ("replace", "insert", "delete", "duplicate-field", "swap-signed-headers")


@st.composite
def tampered_requests(draw: st.DrawFn) -> list[tuple[str, str]]:
    """A correctly signed request with a few headers edited, repeated or dropped."""
    headers = signed_headers()
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.integers(0, len(headers) - 1))
        name, value = headers[index]
        edit = draw(st.sampled_from((*_AUTH_EDITS, "repeat-header", "drop-header", "new-value")))
        if edit == "replace" and value:
            at = draw(st.integers(0, len(value) - 1))
            value = value[:at] + draw(wire_text) + value[at + 1 :]
        elif edit == "insert":
            at = draw(st.integers(0, len(value)))
            value = value[:at] + draw(wire_text) + value[at:]
        elif edit == "delete" and value:
            at = draw(st.integers(0, len(value) - 1))
            value = value[:at] + value[at + draw(st.integers(1, 8)) :]
        elif edit == "duplicate-field" and name == "Authorization":
            # "AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…": repeat one name=value part.
            field = draw(st.sampled_from(value.split(", "))).rpartition(" ")[2]
            value = f"{value}, {field}"
        elif edit == "swap-signed-headers" and name == "Authorization":
            value = value.replace("content-type;host", "host;content-type")
        elif edit == "repeat-header":
            headers.append((name, draw(st.sampled_from((value, draw(wire_text))))))
        elif edit == "drop-header":
            del headers[index]
            if not headers:
                break
            continue
        elif edit == "new-value":
            value = draw(wire_text)
        headers[index] = (name, value)
    return headers
