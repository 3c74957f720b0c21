"""Typed XKS request bodies, parsed and validated from JSON (xks-spec §3, §4).

Validation failures raise ``ValidationError`` with a message naming the field. Unknown fields
are ignored and unlisted ``kmsOperation`` values accepted (§3.2, §3.3); ``kmsRequestId`` is an
opaque string. ARNs are opaque strings too (§12 item 8). Base64 is strict standard RFC 4648 §4
with padding, which is what KMS sends (§12 item 14).

Strictness (issue 9): only canonical Base64 is accepted, the one encoding of the decoded bytes
(RFC 4648 §3.5: zero pad bits, no padding beyond the last quantum, no whitespace), so
``QUJ=`` and ``QUJD====`` are refused; and a JSON object that names a member twice is refused
rather than silently keeping the last value, since two readers of the same body could otherwise
disagree about it; a body nested deeper than 255 levels (XKS bodies have two) is refused too.
Every failure is a ``ValidationError``; nothing else escapes a parser.

Limits that are the implementation's (not the spec's) are checked by the service, after the key
lookup, so the order of checks follows §7.4.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

import orjson
import pybase64

from xks_proxy.aad import MAX_CIPHERTEXT_METADATA_BYTES
from xks_proxy.errors import ValidationError
from xks_proxy.validation import DOT_SEGMENTS

# XKS spec §2.3: at most 128 characters of A-Z a-z 0-9 - . _
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
# XKS spec §4.2 and §4.3: v1 knows one algorithm of each kind.
ENCRYPTION_ALGORITHM = "AES_GCM"
CDIV_ALGORITHM = "SHA_256"
# XKS spec §5.1: the EKM generates a 96- or 128-bit IV; tags are never truncated.
IV_LENGTHS = (12, 16)
TAG_LENGTH = 16

_HEALTH_FIELDS = ("kmsRequestId", "kmsOperation")
_METADATA_FIELDS = (*_HEALTH_FIELDS, "awsPrincipalArn")
_CRYPTO_FIELDS = (*_METADATA_FIELDS, "kmsKeyArn")
_OPTIONAL_FIELDS = (
    "awsPrincipalArn",
    "kmsKeyArn",
    "kmsViaService",
    "awsSourceVpc",
    "awsSourceVpce",
)


class RequestMetadata(NamedTuple):
    """The audit fields KMS sends with every request (xks-spec §3.1)."""

    kms_request_id: str
    kms_operation: str
    aws_principal_arn: str | None = None
    kms_key_arn: str | None = None
    kms_via_service: str | None = None
    aws_source_vpc: str | None = None
    aws_source_vpce: str | None = None


class HealthRequest(NamedTuple):
    metadata: RequestMetadata


class KeyMetadataRequest(NamedTuple):
    metadata: RequestMetadata


class EncryptRequest(NamedTuple):
    metadata: RequestMetadata
    plaintext: bytes
    aad: bytes | None
    want_cdiv: bool


class DecryptRequest(NamedTuple):
    metadata: RequestMetadata
    ciphertext: bytes
    ciphertext_metadata: bytes | None
    aad: bytes | None
    iv: bytes
    tag: bytes


# Path segments that a client normalising URL paths rewrites (RFC 3986 §5.2.4, remove_dot_segments;
# botocore does it), so an external key named like one could never be addressed.


def key_id_problem(key_id: str) -> str | None:
    """Why ``key_id`` cannot name an external key that clients reach, or None when it can.

    For the places that create or configure keys; requests are checked by ``parse_key_id``.
    """
    if not KEY_ID_PATTERN.fullmatch(key_id):
        return f"key id {key_id!r} must be 1-128 characters of A-Z a-z 0-9 . _ -"
    if key_id in DOT_SEGMENTS:
        return (
            f"key id {key_id!r} could never be reached: clients that normalise URL paths "
            "(botocore does) remove '.' and '..' segments"
        )
    return None


def parse_key_id(key_id: str) -> str:
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise ValidationError("externalKeyId must be 1-128 characters of A-Z a-z 0-9 . _ -")
    return key_id


class _DuplicateMemberError(ValueError):
    pass


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise _DuplicateMemberError
    return document


def _distinct_members(document: dict[str, Any]) -> int:
    """How many members the parsed objects hold, at every depth (iterative: orjson allows
    1024 levels, more than Python's recursion limit)."""
    count = 0
    pending: list[Any] = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            count += len(value)
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return count


def _reserializes_to(body: bytes, document: dict[str, Any]) -> bool:
    try:
        return orjson.dumps(document) == body
    except orjson.JSONEncodeError:
        # orjson reads 1024 levels but writes 255; XKS bodies have two, so a body nested
        # deeper than orjson writes is refused rather than checked some slower way.
        raise ValidationError("The request body nests JSON too deeply.") from None


def _has_duplicate_members(body: bytes, document: dict[str, Any]) -> bool:
    """Whether some object of ``body`` (already accepted by orjson) names a member twice.

    Three ways, cheapest first (the standard library's parser with a hook costs about 13 µs
    on a 4 KiB body, more than the rest of the parsing):

    1. Compact JSON, as KMS and the SDKs send it, is exactly orjson's serialization of what
       was parsed, which names each member once: nothing to count.
    2. orjson keeps the last of repeated members, so the parsed objects hold fewer members
       than the text names exactly when a name repeats. In valid JSON without a backslash,
       every ``"`` opens or closes a string, so the text outside strings is what splitting on
       ``"`` leaves at even positions, and each ``:`` there names one member.
    3. A body with a backslash (an escaped quote may hide in a string) goes to the standard
       library's parser, which reports each object's members one by one.
    """
    if _reserializes_to(body, document):
        return False
    if b"\\" not in body:
        named = sum(outside.count(b":") for outside in body.split(b'"')[::2])
        return named != _distinct_members(document)
    try:
        json.loads(body, object_pairs_hook=_reject_duplicates)
    except _DuplicateMemberError:
        return True
    except RecursionError:
        # orjson allows 1024 levels, the standard library fewer; XKS bodies have two.
        raise ValidationError("The request body nests JSON too deeply.") from None
    except ValueError:
        # Not expected after orjson accepted the body; if the two parsers ever disagree, the
        # body is still refused as input, never answered with a 500.
        raise ValidationError("The request body is not valid JSON.") from None
    return False


def load_json_object(body: bytes) -> dict[str, Any]:
    """Decode a request body that must be one JSON object, no member named twice at any depth."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ValidationError("The request body is not valid JSON.") from None
    if not isinstance(document, dict):
        raise ValidationError("The request body must be a JSON object.")
    # orjson (strict: UTF-8 only, no NaN, no lone surrogates) has no hook for duplicate members.
    if _has_duplicate_members(body, document):
        raise ValidationError("The request body names a JSON member more than once.")
    return document


def _string(document: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = document.get(name)
    if value is None:
        if required:
            raise ValidationError(f"{name} is required.")
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string.")
    return value


def _required_string(document: dict[str, Any], name: str) -> str:
    value = _string(document, name, required=True)
    assert value is not None
    return value


def _base64(document: dict[str, Any], name: str, *, required: bool) -> bytes | None:
    value = _string(document, name, required=required)
    if value is None:
        return None
    try:
        # pybase64 (SIMD): about 1 µs for 4 KiB where binascii's strict mode takes 13 µs.
        decoded = pybase64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error, and non-ASCII text
        raise ValidationError(f"{name} is not valid standard Base64.") from None
    # validate=True still takes non-zero pad bits and extra padding; the canonical form is the
    # only one that re-encodes to itself.
    if pybase64.b64encode_as_string(decoded) != value:
        raise ValidationError(f"{name} is not canonical standard Base64.")
    return decoded


def _required_base64(document: dict[str, Any], name: str) -> bytes:
    value = _base64(document, name, required=True)
    assert value is not None
    return value


def _request_metadata(document: dict[str, Any], required: tuple[str, ...]) -> RequestMetadata:
    raw = document.get("requestMetadata")
    if not isinstance(raw, dict) or not raw:
        raise ValidationError("requestMetadata must be a non-empty JSON object.")
    for name in required:
        _string(raw, name, required=True)
    for name in _OPTIONAL_FIELDS:
        _string(raw, name, required=False)
    # Every field is now a string or absent: positional, one lookup each (the hot path).
    get = raw.get
    return RequestMetadata(
        raw["kmsRequestId"],
        raw["kmsOperation"],
        get("awsPrincipalArn"),
        get("kmsKeyArn"),
        get("kmsViaService"),
        get("awsSourceVpc"),
        get("awsSourceVpce"),
    )


def _check_algorithm(document: dict[str, Any]) -> None:
    if _required_string(document, "encryptionAlgorithm") != ENCRYPTION_ALGORITHM:
        raise ValidationError(f"encryptionAlgorithm must be {ENCRYPTION_ALGORITHM}.")


def parse_health(document: dict[str, Any]) -> HealthRequest:
    return HealthRequest(_request_metadata(document, _HEALTH_FIELDS))


def parse_key_metadata(document: dict[str, Any]) -> KeyMetadataRequest:
    # §12 item 2: kmsKeyArn is no longer sent to /metadata; tolerated when it is.
    return KeyMetadataRequest(_request_metadata(document, _METADATA_FIELDS))


def parse_encrypt(document: dict[str, Any]) -> EncryptRequest:
    metadata = _request_metadata(document, _CRYPTO_FIELDS)
    _check_algorithm(document)
    cdiv_algorithm = _string(document, "ciphertextDataIntegrityValueAlgorithm", required=False)
    if cdiv_algorithm is not None and cdiv_algorithm != CDIV_ALGORITHM:
        raise ValidationError(f"ciphertextDataIntegrityValueAlgorithm must be {CDIV_ALGORITHM}.")
    return EncryptRequest(
        metadata=metadata,
        plaintext=_required_base64(document, "plaintext"),
        aad=_base64(document, "additionalAuthenticatedData", required=False),
        want_cdiv=cdiv_algorithm is not None,
    )


def parse_decrypt(document: dict[str, Any]) -> DecryptRequest:
    metadata = _request_metadata(document, _CRYPTO_FIELDS)
    _check_algorithm(document)
    iv = _required_base64(document, "initializationVector")
    if len(iv) not in IV_LENGTHS:
        raise ValidationError("initializationVector must be 12 or 16 bytes.")
    tag = _required_base64(document, "authenticationTag")
    if len(tag) != TAG_LENGTH:
        raise ValidationError("authenticationTag must be 16 bytes.")
    ciphertext_metadata = _base64(document, "ciphertextMetadata", required=False)
    if ciphertext_metadata is not None and len(ciphertext_metadata) > MAX_CIPHERTEXT_METADATA_BYTES:
        raise ValidationError("ciphertextMetadata must be at most 20 bytes.")
    return DecryptRequest(
        metadata=metadata,
        ciphertext=_required_base64(document, "ciphertext"),
        ciphertext_metadata=ciphertext_metadata,
        aad=_base64(document, "additionalAuthenticatedData", required=False),
        iv=iv,
        tag=tag,
    )


def audit_metadata(document: dict[str, Any]) -> RequestMetadata | None:
    """The request metadata as far as it can be read, for the audit log; never raises."""
    raw = document.get("requestMetadata")
    if not isinstance(raw, dict):
        return None

    def text(name: str) -> str | None:
        value = raw.get(name)
        return value if isinstance(value, str) else None

    return RequestMetadata(
        kms_request_id=text("kmsRequestId") or "",
        kms_operation=text("kmsOperation") or "",
        aws_principal_arn=text("awsPrincipalArn"),
        kms_key_arn=text("kmsKeyArn"),
        kms_via_service=text("kmsViaService"),
        aws_source_vpc=text("awsSourceVpc"),
        aws_source_vpce=text("awsSourceVpce"),
    )
