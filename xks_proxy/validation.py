"""Rules the proxy's configuration and the KMS emulator share: one copy of each, so they cannot
drift (issue 14: the emulator checked the URI path's length on create and not on update).

Each rule answers ``None`` when the value is good, or a short description of what is expected;
the caller words the error its own way (a TOML path for the configuration, AWS's constraint
message for the emulator).
"""

from __future__ import annotations

import re

# KMS's XksProxyUriPath (botocore's service model, XksProxyUriPathType): 10-128 characters, an
# optional prefix, then /kms/xks/v and a one- or two-digit version.
KMS_URI_PATH_PATTERN = re.compile(r"(/[a-zA-Z0-9/_-]+)?/kms/xks/v\d{1,2}")
# XKS spec §2.1: this proxy implements version 1 of the API only.
URI_PATH_PATTERN = re.compile(r"(/[A-Za-z0-9/_-]+)?/kms/xks/v1")
MIN_URI_PATH = 10
MAX_URI_PATH = 128
# XKS spec §6.2: access key ids are Base32 text, secrets 43-64 characters of Base64 text.
ACCESS_KEY_ID_PATTERN = re.compile(r"[A-Z2-7]{20,30}")
SECRET_PATTERN = re.compile(r"[A-Za-z0-9/+=]{43,64}")
# URL path segments that path-normalising clients remove, so a key id or URI path made of them
# could never be reached (RFC 3986 §5.2.4).
DOT_SEGMENTS = frozenset({".", ".."})
# Names of backends and key stores in the proxy's configuration.
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
# KMS's XksProxyUriEndpoint: https:// and a host name, on port 443 (no port may be given).
AWS_ENDPOINT_PATTERN = re.compile(r"https://[a-zA-Z0-9.-]+")
MAX_ENDPOINT = 128
# What a developer's proxy on a laptop looks like: http or https, any port.
LOCAL_ENDPOINT_PATTERN = re.compile(r"https?://[a-zA-Z0-9.-]+(:\d{1,5})?")
# KMS's CustomKeyStoreName: 1-256 characters, no other rule.
MAX_KEY_STORE_NAME = 256


def uri_path_problem(uri_path: str, *, any_version: bool = False) -> str | None:
    """The proxy serves v1 only; KMS itself accepts any one- or two-digit version.

    For the proxy (not ``any_version``) a path must also be reachable as written: clients that
    normalise URL paths (botocore does) rewrite ``//``, ``/./`` and ``/../``, so a key store
    configured under such a path would never see a request.
    """
    if not any_version:
        # Between the leading "/" and the last segment: a trailing "/" is the pattern's to refuse.
        segments = uri_path.split("/")[1:-1]
        if "" in segments or DOT_SEGMENTS.intersection(segments):
            return (
                "could never be reached: clients that normalise URL paths (botocore does) "
                "rewrite '//', '/./' and '/../'"
            )
    pattern = KMS_URI_PATH_PATTERN if any_version else URI_PATH_PATTERN
    if not MIN_URI_PATH <= len(uri_path) <= MAX_URI_PATH:
        return f"must be {MIN_URI_PATH} to {MAX_URI_PATH} characters long"
    if not pattern.fullmatch(uri_path):
        version = "v1 or v<1-2 digits>" if any_version else "v1"
        return f"must be [/prefix]/kms/xks/{version}, the prefix of A-Z a-z 0-9 / _ -"
    return None


def access_key_id_problem(access_key_id: str) -> str | None:
    if not ACCESS_KEY_ID_PATTERN.fullmatch(access_key_id):
        return "20-30 characters of A-Z and 2-7"
    return None


def secret_problem(secret: str) -> str | None:
    if not SECRET_PATTERN.fullmatch(secret):
        return "43-64 characters of A-Z a-z 0-9 / + ="
    return None


def endpoint_problem(endpoint: str, *, allow_local: bool) -> str | None:
    """``allow_local`` also accepts ``http://host:port``, which AWS KMS itself refuses."""
    if len(endpoint) > MAX_ENDPOINT:
        return f"at most {MAX_ENDPOINT} characters"
    if AWS_ENDPOINT_PATTERN.fullmatch(endpoint):
        return None
    if allow_local and LOCAL_ENDPOINT_PATTERN.fullmatch(endpoint):
        return None
    return "https:// and a host name" + (", or http(s)://host:port" if allow_local else "")


def key_store_name_problem(name: str) -> str | None:
    if not 1 <= len(name) <= MAX_KEY_STORE_NAME:
        return f"1-{MAX_KEY_STORE_NAME} characters"
    return None
