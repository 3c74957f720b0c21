"""What the schemathesis runs share: a real ``xks-proxy serve`` with TLS on both of its ports,
the documents as schemathesis schemas, and the two ways of signing generated requests (SigV4
through botocore for the XKS API, a bearer token for the admin API).

Bounds: a few dozen examples per operation (``bounded``) and a derandomized hypothesis, so a CI
run is reproducible and both APIs together take 30 s to under two minutes on a loaded 2-core
machine; one keep-alive TLS session per run (``session``) spares a handshake per request.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import requests
import schemathesis
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, settings
from schemathesis.checks import (  # registered checks, found by name
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.conftest import Deployment, make_deployment
from tests.proxy_process import ProxyProcess, add_tls
from xks_proxy import openapi
from xks_proxy.admin.devtoken import DEV_AUDIENCE, DEV_ISSUER
from xks_proxy.admin.roles import Role
from xks_proxy.config import load_config
from xks_proxy.scaffold import ADMIN_PRIVATE_KEY
from xks_proxy.sigv4 import Credential

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def bounded(max_examples: int) -> settings:
    """At most ``max_examples`` per operation, derandomized (the seed is fixed by the test's
    name), no example database: a CI run is reproducible. ``XKS_OPENAPI_EXAMPLES=N`` runs N
    per operation instead, by hand (README, Admin API)."""
    return settings(
        max_examples=int(os.environ.get("XKS_OPENAPI_EXAMPLES", max_examples)),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


# The admin listener says where it serves ("admin API on https://127.0.0.1:PORT/admin/v1/").
_ADMIN_URL = re.compile(r"admin API on (https://\S+?)/admin/v1/")


# schemathesis' coverage phase (boundary values of every keyword) builds its cases when pytest
# collects the tests, whichever are selected: about two minutes for the XKS document's Base64
# patterns on this machine, paid by every pytest run. The examples and fuzzing phases run
# only when the tests do. No stateful phase: the documents declare no links. By hand,
# XKS_OPENAPI_COVERAGE=1 turns the coverage phase on (README, Admin API).
COVERAGE = os.environ.get("XKS_OPENAPI_COVERAGE") == "1"
PHASES = {"coverage": {"enabled": COVERAGE}, "stateful": {"enabled": False}}
NOT_SERVER_ERRORS = ["2xx", "3xx", "4xx"]  # schemathesis' default


def schema(name: str, *, spec_server_errors: tuple[str, ...] = ()) -> OpenApiSchema:
    """``spec_server_errors``: 5xx statuses that are the API's documented answer to some input
    rather than a failure (the response schema still pins their bodies)."""
    config = {
        "phases": PHASES,
        "checks": {
            "not_a_server_error": {"expected-statuses": [*NOT_SERVER_ERRORS, *spec_server_errors]}
        },
    }
    return schemathesis.openapi.from_dict(
        openapi.document(name), config=schemathesis.Config.from_dict(config)
    )


@dataclass
class RunningProxy:
    deployment: Deployment
    process: ProxyProcess
    ca_path: Path
    # Keep-alive connections (schemathesis passes ``verify`` per request: give it ca_path).
    session: requests.Session

    @property
    def xks_url(self) -> str:
        return (
            f"https://localhost:{self.process.port}{self.deployment.config.key_stores[0].uri_path}"
        )

    @property
    def admin_url(self) -> str:
        found = _ADMIN_URL.search(self.process.log)
        assert found is not None, self.process.log
        return found.group(1).replace("127.0.0.1", "localhost")

    @property
    def credential(self) -> Credential:
        return self.deployment.config.key_stores[0].credentials[0]

    @property
    def region(self) -> str:
        return self.deployment.config.key_stores[0].region


def https_deployment(directory: Path) -> Deployment:
    """A fresh ``init`` deployment (its own config, keys and credentials) with TLS on both the
    XKS and the admin port."""
    # make_deployment's request deadline is far above the default 200 ms: a loaded CI machine
    # must not turn a slow Encrypt into 503 DependencyTimeoutException (the runs check
    # answers, not speed).
    deployment = make_deployment(directory)
    add_tls(deployment.config_path)
    # [admin] is already defined: a sub-table may follow anywhere in TOML.
    with deployment.config_path.open("a") as config:
        config.write('\n[admin.tls]\ncertificate = "server.pem"\nprivate_key = "server.key"\n')
    return Deployment(directory, load_config(deployment.config_path))


def serve(deployment: Deployment) -> Iterator[RunningProxy]:
    """``deployment`` served by a real ``xks-proxy serve`` until the generator is closed."""
    with (
        ProxyProcess(deployment.config_path, ready="admin API on") as process,
        requests.Session() as session,
    ):
        process.wait_for("listening on")
        yield RunningProxy(deployment, process, deployment.directory / "ca.pem", session)


def admin_token(deployment: Deployment, ttl_seconds: int = 900) -> str:
    """A token from ``init``'s development key holding every role, so that generated requests
    reach every handler rather than stopping at 403."""
    key = serialization.load_pem_private_key(
        (deployment.directory / ADMIN_PRIVATE_KEY).read_bytes(), password=None
    )
    now = int(time.time())
    claims = {
        "iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": "schemathesis", "iat": now,
        "exp": now + ttl_seconds, "roles": [role.value for role in Role],
    }  # fmt: skip
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": "dev-signing"})  # type: ignore[arg-type]


class BotocoreSigV4(requests.auth.AuthBase):
    """Signs each request as sent with botocore's SigV4 (an independent signer, not the
    proxy's own ``sigv4``), over every header it carries, as KMS signs XKS requests."""

    def __init__(self, credential: Credential, region: str) -> None:
        self._credentials = Credentials(credential.access_key_id, credential.secret_access_key)
        self._region = region

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        for stale in ("Authorization", "X-Amz-Date"):
            request.headers.pop(stale, None)
        signed = AWSRequest(
            method=request.method, url=request.url, data=body, headers=dict(request.headers)
        )
        SigV4Auth(self._credentials, "kms-xks-proxy", self._region).add_auth(signed)
        request.headers.update(dict(signed.headers.items()))
        return request
