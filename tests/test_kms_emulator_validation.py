"""The KMS emulator's answers to bad input, through boto3 and raw HTTP: AWS's validation
wording, pagination markers, the main error of each operation, and never an internal error."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.kms_emulator_helpers import Emulator, code, message, module_emulator, new_key

emulator, kms = module_emulator()


def test_pagination_of_list_operations(emulator: Emulator) -> None:
    kms = emulator.client(region="ap-south-1")  # a region of its own: a known set of keys
    created = {new_key(kms) for _ in range(5)}
    for index, key_id in enumerate(sorted(created)):
        kms.create_alias(AliasName=f"alias/page-{index}", TargetKeyId=key_id)
    seen: list[str] = []
    marker: dict[str, str] = {}
    while True:
        page = kms.list_keys(Limit=2, **marker)
        seen += [k["KeyId"] for k in page["Keys"]]
        assert len(page["Keys"]) <= 2
        if not page["Truncated"]:
            assert "NextMarker" not in page
            break
        marker = {"Marker": page["NextMarker"]}
    assert sorted(seen) == sorted(created)
    paginated = kms.get_paginator("list_aliases").paginate(PaginationConfig={"PageSize": 2})
    assert len([a for p in paginated for a in p["Aliases"]]) == 5
    with pytest.raises(ClientError) as bad_marker:
        kms.list_keys(Marker="bm90LWEtbWFya2Vy")
    assert code(bad_marker) == "InvalidMarkerException"
    with pytest.raises(ClientError) as bad_limit:
        kms.list_aliases(Limit=1001)
    assert code(bad_limit) == "ValidationException"
    assert "Member must have value less than or equal to 1000" in message(bad_limit)


def test_validation_in_aws_words(kms: Any) -> None:
    with pytest.raises(ClientError) as empty:
        kms.describe_key(KeyId="")
    assert message(empty) == (
        "1 validation error detected: Value '' at 'keyId' failed to satisfy constraint: "
        "Member must have length greater than or equal to 1"
    )
    with pytest.raises(ClientError) as invalid:
        kms.describe_key(KeyId="not-a-key")
    assert (code(invalid), message(invalid)) == ("NotFoundException", "Invalid keyId 'not-a-key'")
    missing = "11111111-2222-3333-4444-555555555555"
    with pytest.raises(ClientError) as absent:
        kms.describe_key(KeyId=missing)
    assert message(absent) == (
        f"Key 'arn:aws:kms:us-east-1:111122223333:key/{missing}' does not exist"
    )
    key_id = new_key(kms)
    with pytest.raises(ClientError) as too_big:
        kms.encrypt(KeyId=key_id, Plaintext=b"s" * 4097)
    assert message(too_big) == (
        "1 validation error detected: Value at 'plaintext' failed to satisfy constraint: "
        "Member must have length less than or equal to 4096"
    )
    with pytest.raises(ClientError) as two:
        kms.generate_data_key(KeyId=key_id, NumberOfBytes=0, KeySpec="AES_512")
    assert message(two).startswith("2 validation errors detected: ")
    assert "Member must satisfy enum value set: [AES_256, AES_128]" in message(two)
    with pytest.raises(ClientError) as unimplemented:
        kms.update_primary_region(KeyId=key_id, PrimaryRegion="eu-west-1")
    assert code(unimplemented) == "UnsupportedOperationException"
    with pytest.raises(ClientError) as not_signing:
        kms.sign(KeyId=key_id, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    assert code(not_signing) == "InvalidKeyUsageException"
    with pytest.raises(ClientError) as dry:
        kms.encrypt(KeyId=key_id, Plaintext=b"x", DryRun=True)
    assert code(dry) == "DryRunOperationException"


def _raw_call(emulator: Emulator, operation: str, body: dict[str, Any]) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        emulator.url, data=json.dumps(body).encode(), method="POST",
        headers={"X-Amz-Target": f"TrentService.{operation}",
                 "Content-Type": "application/x-amz-json-1.1",
                 "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDFUZZ/20260101/us-east-1/kms/"
                                  "aws4_request, SignedHeaders=host, Signature=0"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_no_operation_fails_internally_on_bad_input(emulator: Emulator) -> None:
    """Every KMS operation, with no parameters and with each parameter of a wrong JSON type,
    answers as AWS would, with a 4xx KMS error for the wrong types: never a 500 (the emulator's
    log is checked for tracebacks too)."""
    from xks_proxy.kms_emulator.shapes import service_model

    model = service_model()
    wrong = {"string": 7, "blob": {"x": 1}, "integer": "seven", "long": "seven", "boolean": "no",
             "list": "one", "map": ["k"], "structure": "s", "timestamp": "tomorrow"}  # fmt: skip
    for operation, spec in model["operations"].items():
        status, answer = _raw_call(emulator, operation, {})  # CreateKey, List*: may succeed
        assert status == 200 or (400 <= status < 500 and answer["__type"]), (operation, answer)
        members = model["shapes"][spec["input"]["shape"]]["members"] if "input" in spec else {}
        for member, ref in members.items():
            bad = wrong[model["shapes"][ref["shape"]]["type"]]
            status, answer = _raw_call(emulator, operation, {member: bad})
            assert 400 <= status < 500, (operation, member, answer)


def test_main_error_of_each_key_operation(kms: Any) -> None:
    """The error each operation gives for its most common mistake, as AWS names it."""
    pending = new_key(kms)
    kms.schedule_key_deletion(KeyId=pending, PendingWindowInDays=7)
    enabled = new_key(kms)
    missing = "arn:aws:kms:us-east-1:111122223333:key/11111111-2222-3333-4444-555555555555"
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("enable_key", {"KeyId": pending}, "KMSInvalidStateException"),
        ("disable_key", {"KeyId": pending}, "KMSInvalidStateException"),
        ("cancel_key_deletion", {"KeyId": enabled}, "KMSInvalidStateException"),
        ("disable_key_rotation", {"KeyId": missing}, "NotFoundException"),
        ("list_key_rotations", {"KeyId": missing}, "NotFoundException"),
        ("list_aliases", {"KeyId": missing}, "NotFoundException"),
        ("delete_alias", {"AliasName": "alias/never-made"}, "NotFoundException"),
        ("list_key_policies", {"KeyId": missing}, "NotFoundException"),
        ("untag_resource", {"KeyId": pending, "TagKeys": ["a"]}, "KMSInvalidStateException"),
        ("list_resource_tags", {"KeyId": "alias/anything"}, "NotFoundException"),
        ("list_retirable_grants", {"RetiringPrincipal": "arn:aws:iam::1:root", "Marker": "!"},
         "InvalidMarkerException"),
        ("revoke_grant", {"KeyId": enabled, "GrantId": "0" * 64}, "NotFoundException"),
        ("generate_random", {"NumberOfBytes": 0}, "ValidationException"),
        ("get_key_last_usage", {"KeyId": missing}, "NotFoundException"),
        ("create_alias", {"AliasName": "alias/late", "TargetKeyId": pending},
         "KMSInvalidStateException"),
        ("put_key_policy", {"KeyId": pending, "Policy": '{"Statement": []}'},
         "KMSInvalidStateException"),
    ]  # fmt: skip
    for name, params, expected in cases:
        with pytest.raises(ClientError) as refused:
            getattr(kms, name)(**params)
        assert code(refused) == expected, (name, message(refused))
