"""schemathesis against the admin API of a real proxy over HTTPS with a bearer token holding
every role, so generated requests reach every handler: no 5xx, and every answer's status,
content type and body as ``xks_proxy/openapi/admin.json`` says.

The run mutates its deployment (keys made, credentials added, reloads): this module has its
own, made fresh for it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis

from tests.openapi_runs import (
    CHECKS,
    RunningProxy,
    admin_token,
    bounded,
    https_deployment,
    schema,
    serve,
)
from xks_proxy import openapi

SCHEMA = schema(openapi.ADMIN)
# (operationId, status) of every generated request, for the test after the run.
ANSWERS: Counter[tuple[str, int]] = Counter()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    yield from serve(https_deployment(tmp_path_factory.mktemp("openapi-admin")))


@pytest.fixture(scope="module")
def bearer(proxy: RunningProxy) -> str:
    return admin_token(proxy.deployment)


@SCHEMA.parametrize()
@bounded(max_examples=25)
def test_the_admin_api_answers_as_documented(
    case: schemathesis.Case[Any], proxy: RunningProxy, bearer: str
) -> None:
    response = case.call_and_validate(
        base_url=proxy.admin_url,
        headers={"Authorization": f"Bearer {bearer}"},
        session=proxy.session,
        verify=str(proxy.ca_path),
        checks=CHECKS,
    )
    ANSWERS[case.operation.definition.raw["operationId"], response.status_code] += 1


def test_the_generated_requests_reached_every_handler() -> None:
    """With a token of every role no generated request stops at 403 (schemathesis' negative
    cases of the security scheme, without the token, get 401), and every operation answered a
    success at least once."""
    if not ANSWERS:
        pytest.skip("the schemathesis run was not selected")
    assert not [status for _, status in ANSWERS if status == 403], ANSWERS
    operations = {operation for operation, _ in ANSWERS}
    succeeded = {operation for operation, status in ANSWERS if status < 300}
    assert succeeded == operations, sorted(ANSWERS.items())
