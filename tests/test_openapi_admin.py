"""schemathesis against the admin API of a real proxy over HTTPS with a bearer token holding
every role, so generated requests reach every handler: no 5xx, and every answer's status,
content type and body as ``xks_proxy/openapi/admin.json`` says.

The run mutates its deployment (keys made, credentials added, reloads): this module has its
own, made fresh for it. Its key store keeps its policy in the key store database, so a policy
put succeeds (and a get shows the stored policy's revision) without reloading the proxy; the
document's external key (``imported-2027``) is created and imported over the API before the
run, each answer checked against the document: generated material cannot unwrap, so that
import is the one success of ``import-material``, and the run's ``delete-material`` has
material to delete.
"""

from __future__ import annotations

import base64
import os
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
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
from tests.test_admin_policies_store import in_store
from tests.test_byok import wrap
from xks_proxy import openapi

SCHEMA = schema(openapi.ADMIN)
IMPORTED = openapi.document(openapi.ADMIN)["components"]["parameters"]["externalKey"]["example"]
WRAPPING = "RSA_AES_KEY_WRAP_SHA_256"
# Generated material never unwraps: a run answers import-material 4xx only (its success is the
# import made before the run).
NEVER_SUCCEEDS_GENERATED = {"keys.import-material"}
# (operationId, status) of every generated request, for the test after the run.
ANSWERS: Counter[tuple[str, int]] = Counter()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    yield from serve(in_store(https_deployment(tmp_path_factory.mktemp("openapi-admin"))))


@pytest.fixture(scope="module")
def bearer(proxy: RunningProxy) -> str:
    token = admin_token(proxy.deployment)
    import_external_key(proxy, token, proxy.deployment.directory / "import")
    return token


def call(
    proxy: RunningProxy, bearer: str, operation_id: str, body: Any = None, key: str = IMPORTED
) -> dict[str, Any]:
    """One request built from the document's operation, its answer checked as the run checks
    every answer; the answer's body."""
    operation = SCHEMA.find_operation_by_id(operation_id)
    parameters = {"store": proxy.deployment.config.key_stores[0].name, "key": key}
    case = operation.Case(
        path_parameters={k: v for k, v in parameters.items() if f"{{{k}}}" in operation.path},
        **({} if body is None else {"body": body, "media_type": "application/json"}),
    )
    response = case.call_and_validate(
        base_url=proxy.admin_url,
        headers={"Authorization": f"Bearer {bearer}"},
        session=proxy.session,
        verify=str(proxy.ca_path),
        checks=CHECKS,
    )
    assert response.status_code < 300, (operation_id, response.text)
    answer: dict[str, Any] = response.json()
    return answer


def import_external_key(proxy: RunningProxy, bearer: str, work: Path) -> None:
    """The document's external key, created and its material imported over the API, the
    material wrapped by openssl as AWS documents it for KMS."""
    created = call(proxy, bearer, "keys.create", {"keyId": IMPORTED, "origin": "External"})
    assert (created["origin"], created["keyStatus"]) == ("external", "PENDING_IMPORT")
    parameters = call(proxy, bearer, "keys.import-parameters", {"wrappingAlgorithm": WRAPPING})
    work.mkdir()
    (work / "wrapping-key.pem").write_text(parameters["publicKey"])
    wrapped = wrap(work / "wrapping-key.pem", os.urandom(32), WRAPPING, work).read_bytes()
    body = {
        "encryptedKeyMaterial": base64.b64encode(wrapped).decode(),
        "importToken": parameters["importToken"],
        "validTo": (datetime.now(UTC) + timedelta(days=30)).isoformat(),
    }
    imported = call(proxy, bearer, "keys.import-material", body)
    assert (imported["keyStatus"], imported["versions"]) == ("ENABLED", 1)
    assert imported["validTo"] is not None


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
    assert operations == {
        operation["operationId"]
        for item in openapi.document(openapi.ADMIN)["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict) and "operationId" in operation
    }
    succeeded = {operation for operation, status in ANSWERS if status < 300}
    assert succeeded == operations - NEVER_SUCCEEDS_GENERATED, ANSWERS.most_common()
    # Past the guard and the body checks into the import itself: a 400 about the token.
    assert ANSWERS["keys.import-material", 400] > 0, sorted(ANSWERS.items())
