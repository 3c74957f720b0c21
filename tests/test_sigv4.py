"""SigV4: the spec-derived vectors, our signer against botocore's, and every tampering."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from xks_proxy import sigv4

D1_BODY = (
    b'{"requestMetadata":{"kmsRequestId":"4112f4d6-db54-4af4-ae30-c55a22a8dfae",'
    b'"kmsOperation":"CreateCustomKeyStore"}}'
)
D1_PATH = "/keystores/4a0d79d6-1d1b-49fd-9dbe-799cb9c0fb3f/kms/xks/v1/health"
D1_SIGNATURE = "17b891addf2fc7d31bf5dcf6bc15be1d05d66fc18ce4f9a819779205126b2ebc"
CREDENTIAL = sigv4.Credential("AKIAI2SFODNN7EXAMPLE", "FYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE")
D1_NOW = datetime(2022, 11, 10, 12, 0, 0, tzinfo=UTC)


def _sign(
    credential: sigv4.Credential = CREDENTIAL,
    now: datetime = D1_NOW,
    signed_headers: tuple[str, ...] = ("content-type", "host", "x-amz-date"),
) -> dict[str, str]:
    """Sign the D1 request; by default the way curl does (content-type signed too)."""
    return sigv4.sign(
        method="POST",
        path=D1_PATH,
        headers={"Host": "xks.example.com", "Content-Type": "application/json"},
        body=D1_BODY,
        credential=credential,
        region="us-east-2",
        now=now,
        signed_headers=signed_headers,
    )


def _parse_now(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _verify_vector(case: dict[str, Any]) -> sigv4.Credential:
    credential = sigv4.Credential(case["access_key_id"], case["secret_access_key"])
    return sigv4.verify(
        method=case["method"],
        path=case["path"],
        headers=list(case["headers"].items()),
        body=case["body"].encode(),
        credentials={credential.access_key_id: credential},
        region=case["region"],
        service=case["service"],
        now=_parse_now(case["now"]),
    )


def test_vectors_valid_and_tampered(vectors: dict[str, Any]) -> None:
    cases = vectors["sigv4"]
    assert any(c["valid"] for c in cases) and any(not c["valid"] for c in cases)
    for case in cases:
        if case["valid"]:
            assert _verify_vector(case).access_key_id == case["access_key_id"], case["name"]
        else:
            with pytest.raises(sigv4.SignatureError):
                _verify_vector(case)


def test_sign_reproduces_d1_exactly() -> None:
    headers = _sign(signed_headers=sigv4.KMS_SIGNED_HEADERS)
    assert headers["X-Amz-Date"] == "20221110T120000Z"
    assert headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAI2SFODNN7EXAMPLE/20221110/us-east-2/kms-xks-proxy/"
        f"aws4_request, SignedHeaders=host;x-amz-date, Signature={D1_SIGNATURE}"
    )


def test_d2_curl_capture_signed_content_type(vectors: dict[str, Any]) -> None:
    (case,) = [c for c in vectors["sigv4"] if "curl" in c["name"]]
    assert "content-type" in case["headers"]["Authorization"]
    assert _verify_vector(case) == sigv4.Credential(
        case["access_key_id"], case["secret_access_key"]
    )


def _botocore_signed() -> tuple[dict[str, str], datetime]:
    """Headers botocore's own SigV4Auth made (at the real current time), and that time."""
    request = AWSRequest(
        method="POST",
        url=f"https://xks.example.com{D1_PATH}",
        data=D1_BODY,
        headers={"Content-Type": "application/json"},
    )
    signer = SigV4Auth(
        Credentials(CREDENTIAL.access_key_id, CREDENTIAL.secret_access_key),
        "kms-xks-proxy",
        "us-east-2",
    )
    signer.add_auth(request)
    headers = dict(request.headers.items())
    headers["Host"] = "xks.example.com"
    signed_at = datetime.strptime(headers["X-Amz-Date"], sigv4.AMZ_DATE_FORMAT)
    return headers, signed_at.replace(tzinfo=UTC)


def _verify(headers: dict[str, str], **changes: Any) -> sigv4.Credential:
    arguments: dict[str, Any] = {
        "method": "POST",
        "path": D1_PATH,
        "headers": list(headers.items()),
        "body": D1_BODY,
        "credentials": {CREDENTIAL.access_key_id: CREDENTIAL},
        "region": "us-east-2",
        "now": D1_NOW,
    }
    arguments.update(changes)
    return sigv4.verify(**arguments)


def test_botocore_signature_verifies() -> None:
    headers, signed_at = _botocore_signed()
    assert "content-type;host;x-amz-date" in headers["Authorization"]
    assert _verify(headers, now=signed_at) == CREDENTIAL
    with pytest.raises(sigv4.SignatureError):
        _verify(headers, now=signed_at, body=D1_BODY.replace(b"Create", b"Update"))


def test_our_signature_matches_botocore() -> None:
    theirs, signed_at = _botocore_signed()
    ours = _sign(now=signed_at)
    assert ours["Authorization"] == theirs["Authorization"]


def _with(headers: dict[str, str], name: str, value: str) -> dict[str, str]:
    changed = dict(headers)
    changed[name] = value
    return changed


OTHER = sigv4.Credential("BKIAI2SFODNN7EXAMPLE", "GYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE")

TAMPERINGS: list[tuple[str, Any]] = [
    ("body", lambda h: _verify(h, body=D1_BODY + b" ")),
    ("path", lambda h: _verify(h, path=D1_PATH.replace("health", "keys/x/encrypt"))),
    ("method", lambda h: _verify(h, method="PUT")),
    ("query", lambda h: _verify(h, query="a=b")),
    ("host header", lambda h: _verify(_with(h, "Host", "evil.example.com"))),
    ("signed content-type", lambda h: _verify(_with(h, "Content-Type", "text/plain"))),
    ("date header", lambda h: _verify(_with(h, "X-Amz-Date", "20221110T120001Z"))),
    ("region expected", lambda h: _verify(h, region="us-east-1")),
    ("service expected", lambda h: _verify(h, service="kms")),
    ("unknown access key id", lambda h: _verify(h, credentials={OTHER.access_key_id: OTHER})),
    (
        "access key id in header",
        lambda h: _verify(
            _with(h, "Authorization", h["Authorization"].replace("AKIAI2", "BKIAI2")),
            credentials={OTHER.access_key_id: OTHER, CREDENTIAL.access_key_id: CREDENTIAL},
        ),
    ),
    (
        "wrong secret",
        lambda h: _verify(
            h,
            credentials={
                CREDENTIAL.access_key_id: sigv4.Credential(CREDENTIAL.access_key_id, "x" * 44)
            },
        ),
    ),
    (
        "scope date differs from X-Amz-Date",
        lambda h: _verify(
            _with(h, "Authorization", h["Authorization"].replace("/20221110/", "/20221111/"))
        ),
    ),
    (
        "signature bit",
        lambda h: _verify(_with(h, "Authorization", h["Authorization"][:-1] + "0")),
    ),
    ("skew 5 min 1 s late", lambda h: _verify(h, now=D1_NOW + timedelta(minutes=5, seconds=1))),
    ("skew 5 min 1 s early", lambda h: _verify(h, now=D1_NOW - timedelta(minutes=5, seconds=1))),
    (
        "host not signed",
        lambda h: _verify(_with(h, "Authorization", h["Authorization"].replace("host;", ""))),
    ),
    (
        "signed header named in uppercase",
        lambda h: _verify(_with(h, "Authorization", h["Authorization"].replace(";host", ";Host"))),
    ),
    ("no authorization", lambda h: _verify({k: v for k, v in h.items() if k != "Authorization"})),
    ("no date", lambda h: _verify({k: v for k, v in h.items() if k != "X-Amz-Date"})),
    ("malformed date", lambda h: _verify(_with(h, "X-Amz-Date", "2022-11-10T12:00:00Z"))),
    ("other algorithm", lambda h: _verify(_with(h, "Authorization", "AWS4-HMAC-SHA512 x=y"))),
    ("garbage", lambda h: _verify(_with(h, "Authorization", "AWS4-HMAC-SHA256 garbage"))),
    (
        "short scope",
        lambda h: _verify(
            _with(h, "Authorization", h["Authorization"].replace("/aws4_request", ""))
        ),
    ),
]


@pytest.mark.parametrize(("name", "tamper"), TAMPERINGS, ids=[t[0] for t in TAMPERINGS])
def test_tampering_is_rejected(name: str, tamper: Any) -> None:
    headers = _sign()
    assert _verify(headers) == CREDENTIAL
    with pytest.raises(sigv4.SignatureError):
        tamper(headers)


@pytest.mark.parametrize("offset", [timedelta(minutes=-5), timedelta(minutes=5)])
def test_skew_of_exactly_five_minutes_is_accepted(offset: timedelta) -> None:
    assert _verify(_sign(), now=D1_NOW + offset) == CREDENTIAL


def test_several_live_credentials_each_verify() -> None:
    both = {CREDENTIAL.access_key_id: CREDENTIAL, OTHER.access_key_id: OTHER}
    for credential in (CREDENTIAL, OTHER):
        assert _verify(_sign(credential), credentials=both) == credential


def test_error_messages_never_contain_the_secret() -> None:
    headers = _sign()
    for _name, tamper in TAMPERINGS:
        try:
            tamper(headers)
        except sigv4.SignatureError as error:
            assert CREDENTIAL.secret_access_key not in str(error)


# Strictness (issue 9, findings 2 and 8). Each lenient form below is signed correctly with the
# real secret, so before the verifier was strict it was accepted (or crashed): the only reason to
# refuse it is its shape.

SCOPE_TAIL = "us-east-2/kms-xks-proxy/aws4_request"


def _hmac_chain_signature(datestamp: str, to_sign: str) -> str:
    """The SigV4 signing-key derivation, written out here independently of ``sigv4``."""
    import hashlib
    import hmac

    key = ("AWS4" + CREDENTIAL.secret_access_key).encode()
    for part in (datestamp, "us-east-2", "kms-xks-proxy", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def _signed_as_given(
    *,
    amz_dates: tuple[str, ...] = ("20221110T120000Z",),
    signed_headers: tuple[str, ...] = ("host", "x-amz-date"),
    authorization: str = "AWS4-HMAC-SHA256 Credential={credential}, "
    "SignedHeaders={signed}, Signature={signature}",
    extra: tuple[tuple[str, str], ...] = (),
) -> list[tuple[str, str]]:
    """Headers for D1 signed with the real secret over exactly the fields given."""
    headers = [("Host", "xks.example.com")] + [("X-Amz-Date", d) for d in amz_dates]
    datestamp = amz_dates[0][:8]
    to_sign = sigv4.string_to_sign(
        method="POST",
        path=D1_PATH,
        query="",
        headers=sigv4._group_headers(headers),
        signed_headers=list(signed_headers),
        body=D1_BODY,
        amz_date=amz_dates[0],
        scope=f"{datestamp}/{SCOPE_TAIL}",
    )
    value = authorization.format(
        credential=f"{CREDENTIAL.access_key_id}/{datestamp}/{SCOPE_TAIL}",
        signed=";".join(signed_headers),
        signature=_hmac_chain_signature(datestamp, to_sign),
    )
    return [*headers, ("Authorization", value), *extra]


def _verify_list(headers: list[tuple[str, str]]) -> sigv4.Credential:
    return sigv4.verify(
        method="POST",
        path=D1_PATH,
        headers=headers,
        body=D1_BODY,
        credentials={CREDENTIAL.access_key_id: CREDENTIAL},
        region="us-east-2",
        now=D1_NOW,
    )


def test_signed_as_given_helper_makes_a_valid_request() -> None:
    # The helper's own baseline verifies, so each refusal below is about the one change made.
    assert _verify_list(_signed_as_given()) == CREDENTIAL


# str.isdigit() and int() take these; SigV4 dates are ASCII.
FULL_WIDTH_DATE = "20221110T120000Z".translate({ord(d): 0xFF10 + int(d) for d in "0123456789"})

LENIENT_BUT_SIGNED: list[tuple[str, dict[str, Any]]] = [
    ("second X-Amz-Date", {"amz_dates": ("20221110T120000Z", "20221110T120000Z")}),
    ("full-width digits in X-Amz-Date", {"amz_dates": (FULL_WIDTH_DATE,)}),
    ("SignedHeaders repeated", {"signed_headers": ("host", "host", "x-amz-date")}),
    ("SignedHeaders unsorted", {"signed_headers": ("x-amz-date", "host")}),
    (
        "Signature field twice",
        {
            "authorization": "AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders={signed}, "
            "Signature=" + "0" * 64 + ", Signature={signature}"
        },
    ),
    (
        "Credential field twice",
        {
            "authorization": "AWS4-HMAC-SHA256 Credential=X/y, Credential={credential}, "
            "SignedHeaders={signed}, Signature={signature}"
        },
    ),
    (
        "SignedHeaders field twice",
        {
            "authorization": "AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders=host, "
            "SignedHeaders={signed}, Signature={signature}"
        },
    ),
    (
        "unknown field in Authorization",
        {
            "authorization": "AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders={signed}, "
            "Signature={signature}, Extra=1"
        },
    ),
    ("second Authorization header", {"extra": (("Authorization", "AWS4-HMAC-SHA256 x=y"),)}),
]


@pytest.mark.parametrize(
    ("name", "fields"), LENIENT_BUT_SIGNED, ids=[case[0] for case in LENIENT_BUT_SIGNED]
)
def test_lenient_forms_are_refused_even_when_signed(name: str, fields: dict[str, Any]) -> None:
    with pytest.raises(sigv4.SignatureError):
        _verify_list(_signed_as_given(**fields))


def _with_signature(signature: str) -> list[tuple[str, str]]:
    headers = _signed_as_given()
    name, value = headers[-1]
    return [*headers[:-1], (name, value.rpartition("=")[0] + "=" + signature)]


@pytest.mark.parametrize(
    "signature",
    [
        D1_SIGNATURE + "é",  # finding 2: was a TypeError from compare_digest, a 500
        D1_SIGNATURE[:-1] + "é",
        "é" * 64,
        D1_SIGNATURE.upper(),
        D1_SIGNATURE[:-1],
        D1_SIGNATURE + "0",
        "",
        "\udcff" * 64,  # what aiohttp makes of a non-UTF-8 byte
    ],
    ids=["appended é", "last é", "all é", "uppercase", "63 digits", "65 digits", "empty", "bytes"],
)
def test_malformed_signatures_are_signature_errors(signature: str) -> None:
    assert _verify_list(_with_signature(D1_SIGNATURE)) == CREDENTIAL
    with pytest.raises(sigv4.SignatureError):
        _verify_list(_with_signature(signature))


@pytest.mark.parametrize(
    "amz_date",
    [
        FULL_WIDTH_DATE,
        "2022111\uff10T120000Z",
        "20221110T12000\u0660Z",  # Arabic-Indic zero
        " 20221110T120000Z",
        "20221310T120000Z",  # month 13
        "00001110T120000Z",
        "20221110t120000z",
        "",
    ],
)
def test_malformed_dates_are_signature_errors(amz_date: str) -> None:
    headers = [(n, amz_date if n == "X-Amz-Date" else v) for n, v in _signed_as_given()]
    with pytest.raises(sigv4.SignatureError):
        _verify_list(headers)


def test_undecodable_path_is_a_signature_error() -> None:
    # A lone surrogate cannot come off the wire, but verify() must not let UnicodeError out.
    with pytest.raises(sigv4.SignatureError):
        sigv4.verify(
            method="POST",
            path=D1_PATH + "\ud800",
            headers=_signed_as_given(),
            body=D1_BODY,
            credentials={CREDENTIAL.access_key_id: CREDENTIAL},
            region="us-east-2",
            now=D1_NOW,
        )


def test_signature_error_is_an_authentication_failure() -> None:
    from xks_proxy.errors import AuthenticationFailedError

    assert issubclass(sigv4.SignatureError, AuthenticationFailedError)
