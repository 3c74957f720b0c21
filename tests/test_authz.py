"""The Cedar layer on its own (real cedarpy): parse errors with positions, decisions, cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.authz_policies import (
    ALICE,
    ALICE_ENCRYPTS_ONLY,
    BASELINE,
    BOB,
    DECRYPT_ONLY_FROM_VPCE,
    EBS,
    ONLY_EBS,
    VPCE,
)
from xks_proxy.authz.authorizer import Authorizer, PolicyDeniedError
from xks_proxy.authz.policy import PolicyError, parse_policies
from xks_proxy.authz.request import AuthzInput
from xks_proxy.model import RequestMetadata

POLICY = Path("policy.cedar")


def authorizer(text: str) -> Authorizer:
    return Authorizer("dev", parse_policies(text, POLICY))


def metadata(operation: str = "Decrypt", principal: str = ALICE, **fields: str) -> RequestMetadata:
    fields.setdefault("kms_request_id", "r-1")
    return RequestMetadata(kms_operation=operation, aws_principal_arn=principal, **fields)


def decide(text: str, xks_operation: str, meta: RequestMetadata, key: str = "key-both") -> bool:
    return authorizer(text).evaluate(AuthzInput.of("dev", key, xks_operation, meta)).allowed


BAD_POLICIES = [
    (
        "permit (principal, action, resource);\n\nforbid (principal, action resource);",
        "line 3, column 27: unexpected token `resource`",
    ),
    (
        'permit (principal, action, resource) when { context.x == "open };',
        "line 1, column 58: invalid token",
    ),
    (
        'permit (principal, action == Foo::"x", resource);',
        "line 1, column 1: expected an entity uid",
    ),
    ("permit (principal, action, resource)", "line 1, column 37: unexpected end of input"),
    (
        '@id("a")\npermit (principal, action, resource);\n@id("a")\n'
        "forbid (principal, action, resource);",
        "line 3: @id('a') is used twice",
    ),
]


@pytest.mark.parametrize(("text", "where"), BAD_POLICIES)
def test_a_bad_policy_is_refused_with_its_position(text: str, where: str) -> None:
    with pytest.raises(PolicyError) as raised:
        parse_policies(text, POLICY)
    message = str(raised.value)
    assert message.startswith(f"{POLICY}: ")
    assert where in message


def test_templates_are_refused() -> None:
    with pytest.raises(PolicyError, match="templates"):
        parse_policies("permit (principal == ?principal, action, resource);", POLICY)


def test_policy_names_are_their_id_annotation_or_cedar_id() -> None:
    parsed = parse_policies(
        'permit (principal, action, resource);\n@id("two")\nforbid (principal, action, resource)'
        ' when { context.kmsViaService == "a;b" };',
        POLICY,
    )
    assert [(p.name, p.line) for p in parsed.policies.values()] == [("policy0", 1), ("two", 2)]


def test_only_ebs_may_use_the_key() -> None:
    assert decide(ONLY_EBS, "Decrypt", metadata(kms_via_service=EBS))
    assert not decide(ONLY_EBS, "Decrypt", metadata())
    assert not decide(ONLY_EBS, "Encrypt", metadata("GenerateDataKey", kms_via_service="rds"))
    assert decide(ONLY_EBS, "Encrypt", metadata("Encrypt"), key="key-encrypt-only")


def test_decrypt_only_from_the_vpc_endpoint() -> None:
    assert decide(DECRYPT_ONLY_FROM_VPCE, "Decrypt", metadata(aws_source_vpce=VPCE))
    assert not decide(DECRYPT_ONLY_FROM_VPCE, "Decrypt", metadata(aws_source_vpce="vpce-other"))
    # ReEncrypt's decrypt half is an XKS Decrypt too.
    assert not decide(DECRYPT_ONLY_FROM_VPCE, "Decrypt", metadata("ReEncrypt"))
    assert decide(DECRYPT_ONLY_FROM_VPCE, "Encrypt", metadata("ReEncrypt"))


def test_a_principal_may_encrypt_but_not_decrypt() -> None:
    assert decide(ALICE_ENCRYPTS_ONLY, "Encrypt", metadata("Encrypt"))
    assert decide(ALICE_ENCRYPTS_ONLY, "Encrypt", metadata("GenerateDataKey"))
    assert not decide(ALICE_ENCRYPTS_ONLY, "Decrypt", metadata("Decrypt"))
    assert decide(ALICE_ENCRYPTS_ONLY, "Decrypt", metadata("Decrypt", principal=BOB))


def test_an_unknown_kms_operation_is_just_another_action() -> None:
    assert decide(BASELINE, "Encrypt", metadata("BulkEncrypt"))
    only_encrypt = 'permit (principal, action == Kms::Action::"Encrypt", resource);'
    assert decide(only_encrypt, "Encrypt", metadata("Encrypt"))
    assert not decide(only_encrypt, "Encrypt", metadata("BulkEncrypt"))


def test_context_carries_the_metadata_and_the_key_store() -> None:
    text = (
        "permit (principal, action, resource) when {"
        ' context.keyStore == "dev" && context.xksOperation == "Decrypt"'
        ' && context.kmsOperation == "ReEncrypt" && context.awsSourceVpc == "vpc-1"'
        ' && context.kmsKeyArn like "arn:aws:kms:us-east-1:123456789012:*"'
        ' && context.awsPrincipalArn like "arn:aws:iam::123456789012:*" };'
    )
    arn = "arn:aws:kms:us-east-1:123456789012:key/k"
    assert decide(text, "Decrypt", metadata("ReEncrypt", aws_source_vpc="vpc-1", kms_key_arn=arn))
    assert not decide(text, "Decrypt", metadata("ReEncrypt", aws_source_vpc="vpc-1"))


def test_a_policy_that_fails_to_evaluate_denies_and_is_named() -> None:
    text = (
        BASELINE
        + '@id("broken")\nforbid (principal, action, resource) when { context.kmsViaService < 3 };'
    )
    decision = authorizer(text).evaluate(AuthzInput.of("dev", "k", "Decrypt", metadata()))
    assert not decision.allowed
    assert decision.policies == ("broken",)
    assert decision.errors


def test_a_request_the_engine_cannot_take_is_denied_not_raised() -> None:
    # A lone surrogate: orjson refuses it in a body, but a policy-test file may hold it.
    decision = authorizer(BASELINE).evaluate(
        AuthzInput.of("dev", "k", "Decrypt", metadata(principal="\ud800"))
    )
    assert (decision.allowed, decision.policies) == (False, ("(policy engine error)",))


def test_odd_characters_in_ids_are_just_ids() -> None:
    text = 'permit (principal == Aws::Principal::"a\\"b\\nc", action, resource);'
    assert decide(text, "Decrypt", metadata(principal='a"b\nc'), key="k.1_-")
    assert not decide(text, "Decrypt", metadata(principal="a"))


def test_a_deny_names_its_policies_for_the_audit_but_not_for_kms() -> None:
    with pytest.raises(PolicyDeniedError) as raised:
        authorizer(ALICE_ENCRYPTS_ONLY).check("key-both", "Decrypt", metadata())
    assert raised.value.audit_policies == ("alice-may-not-decrypt",)
    assert "alice" not in raised.value.message.lower()
    with pytest.raises(PolicyDeniedError) as raised:
        authorizer('permit (principal, action == Kms::Action::"Sign", resource);').check(
            "key-both", "Decrypt", metadata()
        )
    assert raised.value.audit_policies == ("(no permit matched)",)


def test_decisions_are_cached_by_their_inputs() -> None:
    checker = authorizer(ALICE_ENCRYPTS_ONLY)
    for _ in range(3):
        checker.check("key-both", "Encrypt", metadata("Encrypt"))
        with pytest.raises(PolicyDeniedError):
            checker.check("key-both", "Decrypt", metadata())
    # A new kmsRequestId is not a new input; another via service is.
    checker.check("key-both", "Encrypt", metadata("Encrypt", kms_request_id="other"))
    checker.check("key-both", "Encrypt", metadata("Encrypt", kms_via_service=EBS))
    info = checker.decide.cache_info()
    assert (info.misses, info.hits) == (3, 5)


def test_the_benchmark_tool_measures_and_reports() -> None:
    from tools.authz_bench import measure, report

    cost = measure(requests=500)
    assert cost.requests == 500 and 0 < cost.distinct_inputs <= 500
    assert 0 < cost.hit_rate < 1
    text = report(cost)
    assert "uncached" in text and "amortized" in text


def test_the_schema_check_warns_about_policies_that_cannot_work() -> None:
    text = (
        BASELINE
        + '@id("typo")\nforbid (principal, action, resource) when { context.kmsViaServce == "" };'
        + '\n@id("future")\npermit (principal, action == Kms::Action::"BulkEncrypt", resource);'
    )
    warnings = parse_policies(text, POLICY).warnings
    assert any("policy typo (line 3)" in w and "kmsViaServce" in w for w in warnings)
    assert any("policy future (line 5)" in w and "BulkEncrypt" in w for w in warnings)
    assert not any("allow-the-rest" in w for w in warnings)
    for example in (ONLY_EBS, DECRYPT_ONLY_FROM_VPCE, ALICE_ENCRYPTS_ONLY):
        assert parse_policies(example, POLICY).warnings == ()
