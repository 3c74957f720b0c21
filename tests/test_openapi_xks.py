"""schemathesis against the XKS API of a real proxy over HTTPS, every generated request signed
with botocore's SigV4 so it reaches the handlers: no 5xx, and every answer's status, content
type and body as ``xks_proxy/openapi/xks.json`` says."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis

from tests.conftest import software_database
from tests.openapi_runs import (
    CHECKS,
    BotocoreSigV4,
    RunningProxy,
    bounded,
    https_deployment,
    schema,
    serve,
)
from xks_proxy import openapi
from xks_proxy.backends.base import DECRYPT, ENCRYPT

# xks-spec §7.2: a body over max_body_bytes (negative cases generate some) is 501
# UnsupportedOperationException, the spec's answer for sizes above what the proxy supports.
SCHEMA = schema(openapi.XKS, spec_server_errors=("501",))
# (operation, status, errorName) of every generated request, for the test after the run.
ANSWERS: Counter[tuple[str, int, str]] = Counter()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    deployment = https_deployment(tmp_path_factory.mktemp("openapi-xks"))
    # The document's example key id exists before the proxy starts, so the examples phase
    # reaches the crypto from its first request.
    example = openapi.document(openapi.XKS)["components"]["parameters"]["externalKeyId"]
    database = software_database(deployment.config)
    try:
        database.create_key(example["schema"]["examples"][0], frozenset({ENCRYPT, DECRYPT}))
    finally:
        database.close()
    yield from serve(deployment)


@SCHEMA.parametrize()
@bounded(max_examples=60)
def test_the_xks_api_answers_as_documented(
    case: schemathesis.Case[Any], proxy: RunningProxy
) -> None:
    response = case.call_and_validate(
        base_url=proxy.xks_url,
        auth=BotocoreSigV4(proxy.credential, proxy.region),
        session=proxy.session,
        verify=str(proxy.ca_path),
        checks=CHECKS,
    )
    error = response.json().get("errorName", "") if response.status_code != 200 else ""
    ANSWERS[case.operation.definition.raw["operationId"], response.status_code, error] += 1


def test_the_generated_requests_reached_every_handler() -> None:
    """The run above proves something only if the signed requests got past SigV4 and the key
    lookup: 401 never, and every operation reached its backend (a made-up ciphertext cannot
    authenticate, so Decrypt's proof is InvalidCiphertextException)."""
    if not ANSWERS:
        pytest.skip("the schemathesis run was not selected")
    assert not [status for _, status, _ in ANSWERS if status == 401], ANSWERS
    reached = {op for op, status, _ in ANSWERS if status == 200}
    reached |= {op for op, _, error in ANSWERS if error == "InvalidCiphertextException"}
    assert reached == {"GetHealthStatus", "GetKeyMetadata", "Encrypt", "Decrypt"}, ANSWERS
