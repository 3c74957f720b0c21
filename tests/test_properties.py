"""Property tests over what parses untrusted input: request bodies (``model``) and SigV4.

Bounded so ``make test`` stays fast; ``make fuzz`` runs the same targets for as long as asked.
No example database is kept (``database=None``): every run draws fresh inputs.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import fuzz_targets
from tests.fuzz_targets import CREDENTIAL, signed_headers, verify_request
from xks_proxy import model, sigv4
from xks_proxy.errors import ValidationError

BOUNDED = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@BOUNDED
@given(st.sampled_from(sorted(fuzz_targets.PARSERS)), fuzz_targets.request_bodies())
def test_body_parsers_raise_only_project_errors(operation: str, body: bytes) -> None:
    fuzz_targets.parse_body(operation, body)


def _encrypt_document(**fields: Any) -> dict[str, Any]:
    document = json.loads(fuzz_targets.BODY)
    document["requestMetadata"].update(awsPrincipalArn="a", kmsKeyArn="k")
    document.update(encryptionAlgorithm="AES_GCM", **fields)
    return document  # type: ignore[no-any-return]


@BOUNDED
@given(st.binary(max_size=300))
def test_canonical_base64_is_decoded_exactly(data: bytes) -> None:
    document = _encrypt_document(plaintext=base64.b64encode(data).decode())
    assert model.parse_encrypt(document).plaintext == data


@BOUNDED
@given(st.binary(min_size=1, max_size=60).filter(lambda d: len(d) % 3), st.booleans())
def test_non_canonical_base64_is_refused(data: bytes, extra_padding: bool) -> None:
    canonical = base64.b64encode(data).decode()
    if extra_padding:
        variant = canonical + "="
    else:
        # The last data character before "=" carries pad bits (4 or 2); set the lowest.
        at = canonical.index("=") - 1
        variant = canonical[:at] + _B64[_B64.index(canonical[at]) | 1] + canonical[at + 1 :]
        if variant == canonical:
            return
        assert base64.b64decode(variant) == data  # the same bytes, written another way
    with pytest.raises(ValidationError, match="plaintext"):
        model.parse_encrypt(_encrypt_document(plaintext=variant))


@pytest.mark.parametrize(
    "variant", ["QUJ=", "QUK=", "QUJD====", "QUJD=", "QQ==QQ==", " QUJD", "QUJ"]
)
def test_base64_examples_of_the_issue_are_refused(variant: str) -> None:
    with pytest.raises(ValidationError):
        model.parse_encrypt(_encrypt_document(plaintext=variant))


@BOUNDED
@given(
    st.sampled_from(["plaintext", "encryptionAlgorithm", "requestMetadata", "kmsRequestId"]),
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
)
def test_a_member_named_twice_is_refused(name: str, other: Any) -> None:
    text = json.dumps(_encrypt_document(plaintext="QUJD"))
    text = text.replace(f'"{name}"', f'"{name}": {json.dumps(other)}, "{name}"', 1)
    with pytest.raises(ValidationError, match="more than once"):
        model.load_json_object(text.encode())


def test_json_nested_deeper_than_the_standard_library_takes_is_refused() -> None:
    # orjson accepts 1024 levels; the duplicate check's parser stops earlier.
    for depth in (990, 1010, 1023):
        with pytest.raises(ValidationError):
            model.load_json_object(b'{"a":' + b"[" * depth + b"]" * depth + b"}")


@BOUNDED
@given(fuzz_targets.tampered_requests())
def test_tampered_requests_get_only_signature_errors(headers: list[tuple[str, str]]) -> None:
    if verify_request(headers) is not None:
        # Whatever still verifies kept exactly one of each authentication header.
        names = [name.lower() for name, _ in headers]
        assert names.count("authorization") == names.count("x-amz-date") == 1


_HEADER_NAMES = st.sampled_from(["Authorization", "X-Amz-Date", "Host", "Content-Type", "X-Other"])


@BOUNDED
@given(st.lists(st.tuples(_HEADER_NAMES, fuzz_targets.wire_text), max_size=6))
def test_arbitrary_headers_get_only_signature_errors(headers: list[tuple[str, str]]) -> None:
    assert verify_request(headers) is None


@BOUNDED
@given(
    st.binary(max_size=200),
    st.text(alphabet=_B64[:62] + "._-", min_size=1, max_size=20),
    fuzz_targets.wire_text,
)
def test_what_we_sign_verifies_and_nothing_else_escapes(
    body: bytes, key_id: str, query: str
) -> None:
    path = f"/kms/xks/v1/keys/{key_id}/encrypt"
    headers = signed_headers(body, path)
    assert verify_request(headers, path=path, body=body) == CREDENTIAL
    verify_request(headers, path=path, body=body, query=query)
    verify_request(headers, path=path + query, body=body)


def test_signature_errors_are_the_only_project_error_verify_raises() -> None:
    with pytest.raises(sigv4.SignatureError):
        sigv4.verify(
            method="POST",
            path="/",
            headers=[],
            body=b"",
            credentials={},
            region="us-east-1",
            now=fuzz_targets.NOW,
        )
