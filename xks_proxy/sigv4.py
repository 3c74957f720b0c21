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
from urllib.parse import quote

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


class SignatureError(Exception):
    """Verification failed; ``str(error)`` says why and never contains secret material."""


@lru_cache(maxsize=1024)
def _signing_key(secret: str, datestamp: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (datestamp, region, service, TERMINATOR):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


_NEEDS_NO_QUOTING = re.compile(r"[A-Za-z0-9/_.~-]+")


def _canonical_uri(path: str) -> str:
    # As botocore does for every service but S3: the path as sent, URI-encoded once more.
    # XKS paths are plain ASCII (xks-spec §2.3), for which that encoding changes nothing.
    if _NEEDS_NO_QUOTING.fullmatch(path):
        return path
    return quote(path or "/", safe="/~")


def _parse_amz_date(value: str) -> datetime:
    """``YYYYMMDD'T'HHMMSS'Z'``, parsed without strptime (which costs more than the HMACs)."""
    if (
        len(value) != 16
        or value[8] != "T"
        or value[15] != "Z"
        or not (value[:8] + value[9:15]).isdigit()
    ):
        raise ValueError(value)
    return datetime(
        int(value[0:4]), int(value[4:6]), int(value[6:8]),
        int(value[9:11]), int(value[11:13]), int(value[13:15]), tzinfo=UTC,
    )  # fmt: skip


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
        (ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest())
    )


def _signature(secret: str, datestamp: str, region: str, service: str, to_sign: str) -> str:
    key = _signing_key(secret, datestamp, region, service)
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
    signature: str


def _parse_authorization(value: str) -> _Authorization:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise SignatureError("Authorization header is not AWS4-HMAC-SHA256")
    fields: dict[str, str] = {}
    for item in rest.split(","):
        name, sep, content = item.strip().partition("=")
        if not sep:
            raise SignatureError("malformed Authorization header")
        fields[name] = content
    try:
        credential, signed, signature = (
            fields["Credential"],
            fields["SignedHeaders"],
            fields["Signature"],
        )
    except KeyError as missing:
        raise SignatureError(f"Authorization header lacks {missing.args[0]}") from None
    parts = credential.split("/")
    if len(parts) != 5:
        raise SignatureError("malformed credential scope")
    access_key_id, datestamp, region, service, terminator = parts
    return _Authorization(
        access_key_id=access_key_id,
        datestamp=datestamp,
        region=region,
        service=service,
        terminator=terminator,
        signed_headers=signed.split(";"),
        signature=signature,
    )


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
    during rotation, xks-spec §6.3). Raises ``SignatureError`` on any failure.
    """
    grouped = _group_headers(headers)
    authorization = grouped.get("authorization")
    if not authorization:
        raise SignatureError("missing Authorization header")
    auth = _parse_authorization(authorization[0])
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
    amz_date = grouped["x-amz-date"][0].strip()
    try:
        signed_at = _parse_amz_date(amz_date)
    except ValueError:
        raise SignatureError("malformed X-Amz-Date") from None
    if auth.datestamp != amz_date[:8]:
        raise SignatureError("credential scope date does not match X-Amz-Date")
    if abs(now - signed_at) > max_skew:
        raise SignatureError("request time is more than 5 minutes from the proxy's clock")
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
    expected = _signature(credential.secret_access_key, auth.datestamp, region, service, to_sign)
    if not hmac.compare_digest(expected, auth.signature):
        raise SignatureError("signature does not match")
    return credential
