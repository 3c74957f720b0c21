"""The OpenAPI documents cannot drift from the code: both are valid OpenAPI 3.1; the admin
document and the admin app's routes agree both ways, with each operation's id and permission as
its guard checks them; the XKS document names exactly the four routed operations and, for each
status, errorNames the proxy answers with that status; the admin API serves both documents as
stored, to a token with the read permission."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from tests.authz_policies import ALICE, ALICE_ENCRYPTS_ONLY, BASELINE
from tests.conftest import KEY_BOTH, software_database
from tests.test_admin_api import AiohttpClient, admin_deployment, call, token
from tests.test_admin_policies import BROKEN, with_policy_file
from tests.test_authz_http import POLICY_FILE
from tests.test_credentials_database import database_credentials
from xks_proxy import errors, openapi
from xks_proxy.admin.api import RELOAD, _describe_store, create_admin_app
from xks_proxy.admin.http import guarded_operation
from xks_proxy.admin.roles import OPERATIONS
from xks_proxy.admin.settings import build_guard
from xks_proxy.backends.base import DECRYPT, ENCRYPT
from xks_proxy.config import load_config
from xks_proxy.keymgmt.audit import LifecycleAudit
from xks_proxy.keymgmt.hsm import HsmKey
from xks_proxy.keymgmt.service import KeyManager, describe_key
from xks_proxy.web import routing

HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
REPOSITORY = Path(__file__).resolve().parent.parent
ADMIN_DOCUMENT = openapi.document(openapi.ADMIN)
XKS_DOCUMENT = openapi.document(openapi.XKS)


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(method, path) → the operation object, for every operation of ``document``."""
    return {
        (method, path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def admin_schema_errors(name: str, answer: Any) -> list[str]:
    """Where ``answer``, as it goes over the wire, breaks the admin document's schema ``name``."""
    return _schema_errors({"$ref": f"#/components/schemas/{name}"}, answer)


def documented_answer_errors(method: str, path: str, status: int, answer: Any) -> list[str]:
    """Where ``answer`` breaks what the admin document says ``method path`` (a documented
    path, ``{store}`` and all) answers with ``status``; an undocumented status is one too."""
    responses = operations(ADMIN_DOCUMENT)[method, "/admin/v1" + path]["responses"]
    if str(status) not in responses:
        return [f"{method} {path} documents no {status}"]
    response = resolve(ADMIN_DOCUMENT, responses[str(status)])
    return _schema_errors(response["content"]["application/json"]["schema"], answer)


def _schema_errors(node: dict[str, Any], answer: Any) -> list[str]:
    schema = {**node, "components": ADMIN_DOCUMENT["components"]}
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    wire = orjson.loads(orjson.dumps(answer))
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(wire)]


@pytest.fixture
def admin_app(tmp_path: Path) -> web.Application:
    config = admin_deployment(tmp_path).config
    assert config.admin.auth is not None
    return create_admin_app(config, build_guard(config.admin.auth))


@pytest.mark.parametrize("name", [openapi.ADMIN, openapi.XKS])
def test_the_documents_are_valid_openapi_3_1(name: str) -> None:
    document = openapi.document(name)
    assert document["openapi"].startswith("3.1.")
    validate(document)


def test_the_documents_are_package_data() -> None:
    """An installed proxy serves them: pyproject ships every document of the folder."""
    pyproject = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())
    shipped = pyproject["tool"]["setuptools"]["package-data"]["xks_proxy"]
    folder = REPOSITORY / "xks_proxy" / "openapi"
    assert "openapi/*.json" in shipped
    assert {path.name for path in folder.glob("*.json")} == {openapi.ADMIN, openapi.XKS}


def test_every_admin_route_is_documented_and_every_documented_path_routed(
    admin_app: web.Application,
) -> None:
    routed = {
        (route.method.lower(), route.resource.canonical): route.handler
        for route in admin_app.router.routes()
        if route.method != "HEAD" and route.resource is not None  # aiohttp adds HEAD to GET
    }
    documented = operations(ADMIN_DOCUMENT)
    undocumented = sorted(set(routed) - set(documented))
    unrouted = sorted(set(documented) - set(routed))
    assert not undocumented, f"add to xks_proxy/openapi/admin.json: {undocumented}"
    assert not unrouted, f"documented in xks_proxy/openapi/admin.json, not routed: {unrouted}"
    for key, handler in routed.items():
        operation = guarded_operation(handler)
        assert operation is not None, f"{key} is not guarded by @requires"
        assert documented[key]["operationId"] == operation, key
        assert documented[key]["x-permission"] == OPERATIONS[operation].value, key


def test_every_admin_operation_documents_the_guards_answers() -> None:
    for key, operation in operations(ADMIN_DOCUMENT).items():
        statuses = set(operation["responses"])
        assert {"401", "403"} <= statuses, key
        assert operation.get("security", ADMIN_DOCUMENT["security"]) == [{"bearer": []}], key
        if "requestBody" in operation:
            assert {"400", "413"} <= statuses, key


def test_the_xks_document_names_the_routed_operations() -> None:
    documented = {
        (path, operation["operationId"])
        for (method, path), operation in operations(XKS_DOCUMENT).items()
        if method == "post"
    }
    routed = {("/health", routing.GET_HEALTH_STATUS)} | {
        (f"/keys/{{externalKeyId}}/{suffix}", name)
        for suffix, name in routing._KEY_OPERATIONS.items()
    }
    assert documented == routed
    assert {method for method, _ in operations(XKS_DOCUMENT)} == {"post"}


def _error_classes() -> list[type[errors.XksError]]:
    found: list[type[errors.XksError]] = []
    pending: list[type[errors.XksError]] = [errors.XksError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def _error_names(node: dict[str, Any]) -> set[str]:
    """The errorNames a response schema admits: every part of an ``allOf`` must admit them."""
    names: set[str] | None = None
    for part in [resolve(XKS_DOCUMENT, p) for p in node.get("allOf", [node])]:
        name = resolve(XKS_DOCUMENT, part.get("properties", {}).get("errorName", {}))
        admitted = {name["const"]} if "const" in name else set(name.get("enum", []))
        names = admitted if names is None else names & admitted
    return names or set()


def test_the_xks_error_names_and_statuses_are_the_proxys() -> None:
    answered = {(cls.error_name, cls.http_status) for cls in _error_classes()}
    enum = XKS_DOCUMENT["components"]["schemas"]["ErrorName"]["enum"]
    assert set(enum) == {name for name, _ in answered}
    for key, operation in operations(XKS_DOCUMENT).items():
        for status, response in operation["responses"].items():
            if status == "200":
                continue
            content = resolve(XKS_DOCUMENT, response)["content"]["application/json"]
            names = _error_names(resolve(XKS_DOCUMENT, content["schema"]))
            assert names, (key, status)
            for name in names:
                assert (name, int(status)) in answered, (key, status, name)


@pytest.mark.parametrize(
    ("path", "name"),
    [("/admin/v1/openapi.json", openapi.ADMIN), ("/admin/v1/openapi/xks.json", openapi.XKS)],
)
async def test_the_admin_api_serves_the_documents_as_stored(
    admin_app: web.Application, aiohttp_client: AiohttpClient, path: str, name: str
) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(admin_app)
    response = await client.get(path, headers={"Authorization": f"Bearer {token('viewer')}"})
    assert response.status == 200 and response.content_type == "application/json"
    assert await response.read() == openapi.document_bytes(name)
    assert json.loads(await response.read())["info"]["title"].startswith("xks-proxy")
    refused = await client.get(path)
    assert refused.status == 401
    assert (await refused.json())["error"] == "invalid_token"


def test_every_kind_of_key_is_described_as_documented(tmp_path: Path) -> None:
    """The schemathesis run has a software key store only: the key kinds it may never meet
    (an HSM key, as ``TokenKeys`` lists it; one pending deletion or import) are checked here."""
    config = admin_deployment(tmp_path).config
    database = software_database(config)
    try:
        keys = KeyManager(database, LifecycleAudit(config.audit), "test")
        keys.create("key-made", frozenset({ENCRYPT, DECRYPT}))
        keys.create_external("key-external", frozenset({ENCRYPT}))
        keys.create("key-going", frozenset({DECRYPT}))
        keys.schedule_deletion("key-going", 7)
        records: list[Any] = keys.keys()
    finally:
        database.close()
    statuses = {describe_key(r)["keyStatus"] for r in records}
    assert {"ENABLED", "PENDING_IMPORT", "PENDING_DELETION"} <= statuses
    # As TokenKeys.records() makes them: no creation time on a PKCS#11 token.
    records += [HsmKey("key-hsm", frozenset({ENCRYPT, DECRYPT}), False, (1, 2))]
    for record in records:
        assert not admin_schema_errors("Key", describe_key(record)), record.key_id


def test_key_stores_are_described_as_documented_with_either_credentials_store(
    tmp_path: Path,
) -> None:
    in_file = admin_deployment(tmp_path / "file")
    in_database = admin_deployment(tmp_path / "database")
    database_credentials(in_database)
    described = []
    for deployment in (in_file, in_database):
        config = load_config(deployment.config_path, with_backends=False)
        described.append(_describe_store(deployment.config_path, config.key_stores[0]))
    assert [d["credentialsStore"] for d in described] == ["file", "database"]
    assert [d["credentials"] for d in described] == [1, 1]
    for answer in described:
        assert not admin_schema_errors("KeyStore", answer), answer


async def test_the_policy_answers_of_a_policy_file_are_as_documented(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    """The schemathesis run keeps its policy in the database: a policy file's answers (put
    with a reload, a file in force that does not parse) are checked here."""
    config = with_policy_file(admin_deployment(tmp_path), ALICE_ENCRYPTS_ONLY).config
    assert config.admin.auth is not None
    app = create_admin_app(config, build_guard(config.admin.auth))
    reloads: list[int] = []
    app[RELOAD] = lambda: reloads.append(1)
    client = await aiohttp_client(app)
    asked = {"xksOperation": "Decrypt", "keyId": KEY_BOTH, "kmsOperation": "Decrypt",
             "awsPrincipalArn": ALICE}  # fmt: skip
    policy = "/key-stores/{store}/policy"
    steps: list[tuple[str, str, str, Any, str]] = [
        ("get", policy, "viewer", None, "valid"),
        ("post", policy + "/explain", "viewer", asked, "alice-may-not-decrypt"),
        ("put", policy, "security-admin", {"policies": BROKEN}, "invalid_policy"),
        ("put", policy, "security-admin", {"policies": BASELINE}, "requested"),
        ("post", policy + "/explain", "viewer", {"xksOperation": "GetHealthStatus"}, "never"),
    ]
    for method, path, role, body, expected in steps:
        where = path.format(store="dev")
        status, answer = await call(client, method.upper(), where, token(role), body)
        assert expected in json.dumps(answer), (method, path, answer)
        assert not documented_answer_errors(method, path, status, answer), (path, answer)
    assert reloads == [1]
    (tmp_path / POLICY_FILE).write_text(BROKEN)  # edited on disk, not reloaded
    for method, path, body in [("get", policy, None), ("post", policy + "/explain", asked)]:
        where = path.format(store="dev")
        status, answer = await call(client, method.upper(), where, token("viewer"), body)
        assert "line 8, column 16" in json.dumps(answer), answer
        assert not documented_answer_errors(method, path, status, answer), (path, answer)
