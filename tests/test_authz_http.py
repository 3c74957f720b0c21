"""Secondary authorization end to end over real HTTP: each README example policy allows and
denies what it says, the denial is 403 AccessDeniedException naming no policy, the audit line
names the deciding policy, GetHealthStatus is exempt, and the check sits where xks-spec §7.4
puts it (after "key exists", before key state)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.authz_policies import (
    ALICE,
    ALICE_ENCRYPTS_ONLY,
    BOB,
    DECRYPT_ONLY_FROM_VPCE,
    DENY_ALL,
    EBS,
    ONLY_EBS,
    VPCE,
)
from tests.conftest import (
    KEY_BOTH,
    KEY_DISABLED,
    KEY_ENCRYPT_ONLY,
    KEY_OUTSIDE_STORE,
    Deployment,
    make_deployment,
)
from tests.xks_client import HEALTH_BODY, XksClient, crypto_metadata, decrypt_body, encrypt_body
from xks_proxy.runtime import ProxyRuntime
from xks_proxy.web.app import create_app

AiohttpClient = Callable[..., Awaitable[TestClient[Any, Any]]]
POLICY_FILE = "policy.cedar"


def deployment_with_policy(directory: Path, policy: str) -> Deployment:
    (directory / POLICY_FILE).parent.mkdir(parents=True, exist_ok=True)
    (directory / POLICY_FILE).write_text(policy)
    return make_deployment(
        directory,
        **{'keys = ["key-*"]': f'keys = ["key-*"]\nauthorization_policy = "{POLICY_FILE}"'},
    )


async def client_for(deployment: Deployment, aiohttp_client: AiohttpClient) -> XksClient:
    store = deployment.config.key_stores[0]
    client = await aiohttp_client(create_app(ProxyRuntime(deployment.config)))
    return XksClient(client, store.uri_path, store.region, store.credentials[0])


def with_metadata(document: dict[str, Any], **fields: str) -> dict[str, Any]:
    document["requestMetadata"].update(fields)
    return document


def encrypt(**fields: str) -> dict[str, Any]:
    # No CDIV, so that encrypt-only keys take it too.
    return with_metadata(encrypt_body(b"data", cdiv=False), **fields)


def decrypt(encrypted: dict[str, Any], **fields: str) -> dict[str, Any]:
    return with_metadata(decrypt_body(encrypted), **fields)


def audit_lines(deployment: Deployment) -> list[dict[str, Any]]:
    path = Path(deployment.config.audit.path)
    return [json.loads(line) for line in path.read_bytes().splitlines()]


async def expect_denied(xks: XksClient, operation: str, key: str, body: dict[str, Any]) -> None:
    error = await xks.call(operation, key, body, expect=403)
    assert error["errorName"] == "AccessDeniedException"
    # The KMS-facing message names no policy (it reaches the KMS caller).
    assert "policy.cedar" not in error["errorMessage"]
    assert "only" not in error["errorMessage"] and "alice" not in error["errorMessage"].lower()


@pytest.fixture
def policy_deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Deployment:
    return deployment_with_policy(tmp_path, request.param)


@pytest.mark.parametrize("policy_deployment", [ONLY_EBS], indirect=True)
async def test_only_ebs_may_use_the_key(
    policy_deployment: Deployment, aiohttp_client: AiohttpClient
) -> None:
    xks = await client_for(policy_deployment, aiohttp_client)
    encrypted = await xks.call("encrypt", KEY_BOTH, encrypt(kmsViaService=EBS))
    await xks.call("decrypt", KEY_BOTH, decrypt(encrypted, kmsViaService=EBS))
    await expect_denied(xks, "decrypt", KEY_BOTH, decrypt(encrypted))
    await expect_denied(xks, "encrypt", KEY_BOTH, encrypt(kmsViaService="rds.amazonaws.com"))
    # Other keys are not restricted.
    await xks.call("encrypt", KEY_ENCRYPT_ONLY, encrypt())
    lines = audit_lines(policy_deployment)
    assert [(line["outcome"], line["status"], line["authzPolicies"]) for line in lines] == [
        ("success", 200, None),
        ("success", 200, None),
        ("AccessDeniedException", 403, ["key-both-only-through-ebs"]),
        ("AccessDeniedException", 403, ["key-both-only-through-ebs"]),
        ("success", 200, None),
    ]
    assert lines[3]["kmsViaService"] == "rds.amazonaws.com"


@pytest.mark.parametrize("policy_deployment", [DECRYPT_ONLY_FROM_VPCE], indirect=True)
async def test_decrypt_only_from_the_vpc_endpoint(
    policy_deployment: Deployment, aiohttp_client: AiohttpClient
) -> None:
    xks = await client_for(policy_deployment, aiohttp_client)
    encrypted = await xks.call("encrypt", KEY_BOTH, encrypt())
    result = await xks.call("decrypt", KEY_BOTH, decrypt(encrypted, awsSourceVpce=VPCE))
    assert result["plaintext"] == encrypt_body(b"data")["plaintext"]
    await expect_denied(
        xks, "decrypt", KEY_BOTH, decrypt(encrypted, awsSourceVpce="vpce-0ffffffffffffffff")
    )
    await expect_denied(xks, "decrypt", KEY_BOTH, decrypt(encrypted))
    denied = audit_lines(policy_deployment)[2:]
    assert {tuple(line["authzPolicies"]) for line in denied} == {("decrypt-only-from-vpce",)}
    assert denied[0]["awsSourceVpce"] == "vpce-0ffffffffffffffff"


@pytest.mark.parametrize("policy_deployment", [ALICE_ENCRYPTS_ONLY], indirect=True)
async def test_a_principal_may_encrypt_but_not_decrypt(
    policy_deployment: Deployment, aiohttp_client: AiohttpClient
) -> None:
    xks = await client_for(policy_deployment, aiohttp_client)
    assert crypto_metadata("Encrypt")["awsPrincipalArn"] == ALICE
    encrypted = await xks.call("encrypt", KEY_BOTH, encrypt())
    await expect_denied(xks, "decrypt", KEY_BOTH, decrypt(encrypted))
    await expect_denied(xks, "decrypt", KEY_BOTH, decrypt(encrypted, kmsOperation="ReEncrypt"))
    await xks.call("decrypt", KEY_BOTH, decrypt(encrypted, awsPrincipalArn=BOB))
    lines = audit_lines(policy_deployment)
    assert [line["awsPrincipalArn"] for line in lines] == [ALICE, ALICE, ALICE, BOB]
    assert [line["authzPolicies"] for line in lines] == [
        None,
        ["alice-may-not-decrypt"],
        ["alice-may-not-decrypt"],
        None,
    ]


@pytest.mark.parametrize("policy_deployment", [DENY_ALL], indirect=True)
async def test_health_is_never_subject_to_authorization(
    policy_deployment: Deployment, aiohttp_client: AiohttpClient
) -> None:
    xks = await client_for(policy_deployment, aiohttp_client)
    health = await xks.call("health", None, HEALTH_BODY)
    assert health["ekmFleetDetails"]
    metadata_body = {"requestMetadata": crypto_metadata("DescribeKey")}
    await expect_denied(xks, "metadata", KEY_BOTH, metadata_body)
    lines = audit_lines(policy_deployment)
    assert [(line["xksOperation"], line["status"]) for line in lines] == [
        ("GetHealthStatus", 200),
        ("GetKeyMetadata", 403),
    ]
    assert lines[1]["authzPolicies"] == ["nothing"]


@pytest.mark.parametrize("policy_deployment", [DENY_ALL], indirect=True)
async def test_authorization_comes_after_key_exists_and_before_key_state(
    policy_deployment: Deployment, aiohttp_client: AiohttpClient
) -> None:
    xks = await client_for(policy_deployment, aiohttp_client)
    # Outside the key store's keys: 404 first (§7.4: key exists, then authorization).
    error = await xks.call("encrypt", KEY_OUTSIDE_STORE, encrypt(), expect=404)
    assert error["errorName"] == "KeyNotFoundException"
    # A disabled key is 403, not 400: the state is the EKM's to tell, after authorization.
    await expect_denied(xks, "encrypt", KEY_DISABLED, encrypt())
    # Likewise a key id the store may hold but the EKM does not: a denied caller learns nothing.
    await expect_denied(xks, "encrypt", "key-nonexistent", encrypt())


@pytest.mark.parametrize(
    "policy_deployment",
    ['@id("encrypt-only")\npermit (principal, action == Kms::Action::"Encrypt", resource);\n'],
    indirect=True,
)
async def test_an_unknown_kms_operation_is_evaluated_not_rejected(
    policy_deployment: Deployment, aiohttp_client: AiohttpClient
) -> None:
    xks = await client_for(policy_deployment, aiohttp_client)
    await xks.call("encrypt", KEY_BOTH, encrypt(kmsOperation="Encrypt"))
    await expect_denied(xks, "encrypt", KEY_BOTH, encrypt(kmsOperation="BulkEncrypt"))
    assert audit_lines(policy_deployment)[1]["authzPolicies"] == ["(no permit matched)"]


async def test_without_a_policy_everything_authenticated_is_allowed(
    software_deployment: Deployment, aiohttp_client: AiohttpClient
) -> None:
    assert software_deployment.config.key_stores[0].authorization_policy is None
    xks = await client_for(software_deployment, aiohttp_client)
    encrypted = await xks.call("encrypt", KEY_BOTH, encrypt(kmsOperation="BulkEncrypt"))
    await xks.call("decrypt", KEY_BOTH, decrypt(encrypted))
    assert {line["authzPolicies"] for line in audit_lines(software_deployment)} == {None}
