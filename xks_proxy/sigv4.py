"""AWS Signature Version 4 for the XKS proxy API, both ways: ``sign()`` and ``verify()``.

Pure standard library, no HTTP framework: the server verifies with it, the KMS emulator and the
load generator sign with it.

What verification honours (xks-spec §6.2, §12 items 15-17):

* whatever ``SignedHeaders`` lists (KMS signs ``host;x-amz-date``, curl adds ``content-type``),
  with ``host`` and ``x-amz-date`` required;
* the Host header exactly as received, never rebuilt from configuration;
* the lowercase hex SHA-256 of the exact body bytes;
* the credential scope: date equal to ``X-Amz-Date``'s, the key store's region, service
  ``kms-xks-proxy``, terminator ``aws4_request``;
* a clock skew of at most 5 minutes either way;
* a constant-time signature comparison.

Strictness (issue 9): a request any signer we know (KMS, botocore, curl ``--aws-sigv4``) would
never send is refused before any HMAC runs, always with ``SignatureError`` (a 401
AuthenticationFailedException), never another exception:

* exactly one ``Authorization`` and one ``X-Amz-Date`` header;
* ``Authorization`` is printable ASCII: ``AWS4-HMAC-SHA256`` then ``Credential``,
  ``SignedHeaders`` and ``Signature``, each exactly once and nothing else;
* ``SignedHeaders`` is lowercase header names, sorted, without repeats (SigV4 itself requires
  the sorted order, so a signer that does otherwise would never verify anyway);
* ``Signature`` is 64 lowercase hex digits, compared as bytes;
* ``X-Amz-Date`` is ``YYYYMMDD'T'HHMMSS'Z'`` in ASCII digits (``str.isdigit`` would let
  full-width digits through) and a real calendar time.

Derived signing keys are cached per (secret, date, region, service), so the four chained HMACs
run once a day per credential instead of once a request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import pairwise
from urllib.parse import quote

from xks_proxy.errors import AuthenticationFailedError

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "kms-xks-proxy"
TERMINATOR = "aws4_request"
# XKS spec §6.2: requests more than 5 minutes in the past or future SHOULD fail authentication.
MAX_CLOCK_SKEW = timedelta(minutes=5)
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
REQUIRED_SIGNED_HEADERS = frozenset({"host", "x-amz-date"})
KMS_SIGNED_HEADERS = ("host", "x-amz-date")


@dataclass(frozen=True, slots=True)
class Credential:
    """A SigV4 credential: the secret is used as UTF-8 text, never Base64-decoded (§12 item 5)."""

    access_key_id: str
    secret_access_key: str = field(repr=False)


class SignatureError(AuthenticationFailedError):
    """Verification failed; ``str(error)`` says why and never contains secret or request bytes.

    An ``AuthenticationFailedError``, so a caller that forgets to translate it still answers 401.
    """


@lru_cache(maxsize=1024)
def _signing_key(secret: str, datestamp: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (datestamp, region, service, TERMINATOR):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


# aiohttp decodes request bytes that are not UTF-8 with surrogateescape; encoding back the same
# way signs the bytes that were received.
_WIRE_ERRORS = "surrogateescape"
_NEEDS_NO_QUOTING = re.compile(r"[A-Za-z0-9/_.~-]+")


def _canonical_uri(path: str) -> str:
    # As botocore does for every service but S3: the path as sent, URI-encoded once more.
    # XKS paths are plain ASCII (xks-spec §2.3), for which that encoding changes nothing.
    if _NEEDS_NO_QUOTING.fullmatch(path):
        return path
    return quote(path or "/", safe="/~", encoding="utf-8", errors=_WIRE_ERRORS)


_AMZ_DATE = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})T([0-9]{2})([0-9]{2})([0-9]{2})Z")


# KMS at 1,800 requests/s sends the same X-Amz-Date hundreds of times a second.
@lru_cache(maxsize=64)
def _parse_amz_date(value: str) -> datetime:
    """``YYYYMMDD'T'HHMMSS'Z'``, parsed without strptime (which costs more than the HMACs).

    ``[0-9]``, not ``\\d`` or ``str.isdigit``: both accept non-ASCII digits.
    """
    match = _AMZ_DATE.fullmatch(value)
    if match is None:
        raise ValueError("malformed X-Amz-Date")
    year, month, day, hour, minute, second = map(int, match.groups())
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def _canonical_query(query: str) -> str:
    if not query:
        return ""
    pairs = [p if "=" in p else p + "=" for p in query.split("&") if p]
    return "&".join(sorted(pairs))


def _canonical_header_value(values: list[str]) -> str:
    return ",".join(" ".join(v.split()) for v in values)


def _group_headers(headers: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, value in headers:
        grouped.setdefault(name.lower(), []).append(value)
    return grouped


def string_to_sign(
    *,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, list[str]],
    signed_headers: list[str],
    body: bytes,
    amz_date: str,
    scope: str,
) -> str:
    """The SigV4 string to sign; ``headers`` maps lowercase names to every value received."""
    canonical_headers = "".join(
        f"{name}:{_canonical_header_value(headers[name])}\n" for name in signed_headers
    )
    canonical_request = "\n".join(
        (
            method.upper(),
            _canonical_uri(path),
            _canonical_query(query),
            canonical_headers,
            ";".join(signed_headers),
            hashlib.sha256(body).hexdigest(),
        )
    )
    return "\n".join(
        (
            ALGORITHM,
            amz_date,
            scope,
            hashlib.sha256(canonical_request.encode("utf-8", _WIRE_ERRORS)).hexdigest(),
        )
    )


def _signature(secret: str, datestamp: str, region: str, service: str, to_sign: str) -> str:
    key = _signing_key(secret, datestamp, region, service)
    # hmac.digest was timed against this (tools/micro_ab.py) and showed no consistent gain.
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def sign(
    *,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    credential: Credential,
    region: str,
    now: datetime,
    query: str = "",
    service: str = SERVICE,
    signed_headers: Iterable[str] = KMS_SIGNED_HEADERS,
) -> dict[str, str]:
    """Return ``headers`` plus ``X-Amz-Date`` and ``Authorization``; ``headers`` must hold Host."""
    amz_date = now.astimezone(UTC).strftime(AMZ_DATE_FORMAT)
    datestamp = amz_date[:8]
    out = dict(headers)
    out["X-Amz-Date"] = amz_date
    grouped = _group_headers(out.items())
    names = sorted({n.lower() for n in signed_headers} | REQUIRED_SIGNED_HEADERS)
    missing = [n for n in names if n not in grouped]
    if missing:
        raise ValueError(f"headers to sign are missing: {', '.join(missing)}")
    scope = f"{datestamp}/{region}/{service}/{TERMINATOR}"
    to_sign = string_to_sign(
        method=method,
        path=path,
        query=query,
        headers=grouped,
        signed_headers=names,
        body=body,
        amz_date=amz_date,
        scope=scope,
    )
    signature = _signature(credential.secret_access_key, datestamp, region, service, to_sign)
    out["Authorization"] = (
        f"{ALGORITHM} Credential={credential.access_key_id}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return out


@dataclass(frozen=True, slots=True)
class _Authorization:
    access_key_id: str
    datestamp: str
    region: str
    service: str
    terminator: str
    signed_headers: list[str]


_AUTHORIZATION_FIELDS = ("Credential", "SignedHeaders", "Signature")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
# RFC 9110 §5.1 token characters, lowercased as SigV4 requires.
_SIGNED_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")


def _authorization_fields(value: str) -> dict[str, str]:
    if not _PRINTABLE_ASCII.fullmatch(value):
        raise SignatureError("Authorization header is not printable ASCII")
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise SignatureError("Authorization header is not AWS4-HMAC-SHA256")
    fields: dict[str, str] = {}
    for item in rest.split(","):
        name, sep, content = item.strip().partition("=")
        if not sep:
            raise SignatureError("malformed Authorization header")
        if name not in _AUTHORIZATION_FIELDS:
            raise SignatureError("Authorization header has an unknown field")
        if name in fields:
            raise SignatureError(f"Authorization header repeats {name}")
        fields[name] = content
    for name in _AUTHORIZATION_FIELDS:
        if name not in fields:
            raise SignatureError(f"Authorization header lacks {name}")
    return fields


def _signed_header_names(value: str) -> list[str]:
    names = value.split(";")
    if not all(_SIGNED_HEADER_NAME.fullmatch(name) for name in names):
        raise SignatureError("SignedHeaders must be lowercase header names separated by ;")
    # Strictly increasing: sorted (as SigV4 requires) and without repeats.
    if any(a >= b for a, b in pairwise(names)):
        raise SignatureError("SignedHeaders must be sorted and name each header once")
    return names


def _parse_authorization_strictly(value: str) -> tuple[_Authorization, bytes]:
    fields = _authorization_fields(value)
    parts = fields["Credential"].split("/")
    if len(parts) != 5:
        raise SignatureError("malformed credential scope")
    access_key_id, datestamp, region, service, terminator = parts
    if not _SIGNATURE.fullmatch(fields["Signature"]):
        raise SignatureError("Signature must be 64 lowercase hex digits")
    auth = _Authorization(
        access_key_id=access_key_id,
        datestamp=datestamp,
        region=region,
        service=service,
        terminator=terminator,
        signed_headers=_signed_header_names(fields["SignedHeaders"]),
    )
    return auth, fields["Signature"].encode("ascii")


_SIGNATURE_FIELD = "Signature="
_PLACEHOLDER_SIGNATURE = "0" * 64


@lru_cache(maxsize=256)
def _parse_authorization_prefix(prefix: str) -> _Authorization:
    return _parse_authorization_strictly(prefix + _SIGNATURE_FIELD + _PLACEHOLDER_SIGNATURE)[0]


def _parse_authorization(value: str) -> tuple[_Authorization, bytes]:
    """The parsed header and its signature (as bytes).

    Every signer puts ``Signature`` last, and all that comes before it is the same for every
    request of one credential on one day, so that part's strict parse is cached. When what
    follows the last ``Signature=`` is 64 lowercase hex digits (no comma, space or ``=``), the
    header parses exactly as its prefix does with any other such signature; anything else gets
    the strict parse of the whole header.
    """
    prefix, found, signature = value.rpartition(_SIGNATURE_FIELD)
    if found and _SIGNATURE.fullmatch(signature):
        return _parse_authorization_prefix(prefix), signature.encode("ascii")
    return _parse_authorization_strictly(value)


def _single(grouped: Mapping[str, list[str]], name: str, display: str) -> str:
    values = grouped.get(name)
    if not values:
        raise SignatureError(f"missing {display} header")
    if len(values) > 1:
        raise SignatureError(f"{display} header appears more than once")
    return values[0]


def verify(
    *,
    method: str,
    path: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    credentials: Mapping[str, Credential],
    region: str,
    now: datetime,
    query: str = "",
    service: str = SERVICE,
    max_skew: timedelta = MAX_CLOCK_SKEW,
) -> Credential:
    """Check a request's SigV4 signature; return the credential that signed it.

    ``credentials`` maps the access key ids accepted here to their credential (several at once
    during rotation, xks-spec §6.3). Raises ``SignatureError`` on any failure, and nothing else.
    """
    grouped = _group_headers(headers)
    auth, signature = _parse_authorization(_single(grouped, "authorization", "Authorization"))
    amz_date = _single(grouped, "x-amz-date", "X-Amz-Date")
    credential = credentials.get(auth.access_key_id)
    if credential is None:
        raise SignatureError("access key id is not valid for this key store")
    if auth.region != region:
        raise SignatureError("credential scope names the wrong region")
    if auth.service != service or auth.terminator != TERMINATOR:
        raise SignatureError("credential scope names the wrong service")
    if not REQUIRED_SIGNED_HEADERS.issubset(auth.signed_headers):
        raise SignatureError("SignedHeaders must include host and x-amz-date")
    missing = [name for name in auth.signed_headers if name not in grouped]
    if missing:
        raise SignatureError("a signed header is missing from the request")
    try:
        signed_at = _parse_amz_date(amz_date)
    except ValueError:
        raise SignatureError("malformed X-Amz-Date") from None
    if auth.datestamp != amz_date[:8]:
        raise SignatureError("credential scope date does not match X-Amz-Date")
    if abs(now - signed_at) > max_skew:
        raise SignatureError("request time is more than 5 minutes from the proxy's clock")
    try:
        to_sign = string_to_sign(
            method=method,
            path=path,
            query=query,
            headers=grouped,
            signed_headers=auth.signed_headers,
            body=body,
            amz_date=amz_date,
            scope=f"{auth.datestamp}/{auth.region}/{auth.service}/{auth.terminator}",
        )
    except UnicodeError:
        # Only text that did not come off the wire as bytes (a lone surrogate) gets here.
        raise SignatureError("the request line or a signed header is not encodable") from None
    expected = _signature(credential.secret_access_key, auth.datestamp, region, service, to_sign)
    # Bytes, not str: compare_digest raises TypeError on non-ASCII text (issue 9 finding 2).
    if not hmac.compare_digest(expected.encode("ascii"), signature):
        raise SignatureError("signature does not match")
    return credential
