"""The KMS emulator's own keys (Origin AWS_KMS) through boto3: policies, tags, aliases, rotation,
regions, pagination and AWS's validation wording. No proxy is needed, so one emulator serves
the module; each test makes its own keys. Every answer is checked against the service model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.kms_emulator_helpers import Emulator, code, message, module_emulator, new_key

emulator, kms = module_emulator()


def test_default_and_custom_key_policies(kms: Any) -> None:
    key_id = new_key(kms)
    default = kms.get_key_policy(KeyId=key_id, PolicyName="default")
    assert default["PolicyName"] == "default"
    statement = json.loads(default["Policy"])["Statement"][0]
    assert statement["Principal"] == {"AWS": "arn:aws:iam::111122223333:root"}
    assert statement["Action"] == "kms:*" and statement["Effect"] == "Allow"
    assert kms.list_key_policies(KeyId=key_id)["PolicyNames"] == ["default"]
    grant = {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:Decrypt", "Resource": "*"}
    policy = json.dumps({"Version": "2012-10-17", "Statement": [grant]})
    kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy=policy)
    assert kms.get_key_policy(KeyId=key_id)["Policy"] == policy
    created = new_key(kms, Policy=policy)
    assert kms.get_key_policy(KeyId=created)["Policy"] == policy
    with pytest.raises(ClientError) as malformed:
        kms.put_key_policy(KeyId=key_id, Policy="{not json")
    assert code(malformed) == "MalformedPolicyDocumentException"
    with pytest.raises(ClientError) as other_name:
        kms.get_key_policy(KeyId=key_id, PolicyName="other")
    assert code(other_name) == "NotFoundException"


def test_tags_on_create_and_after(kms: Any) -> None:
    key_id = new_key(
        kms, Tags=[{"TagKey": "team", "TagValue": "payments"}, {"TagKey": "env", "TagValue": "dev"}]
    )
    tags = kms.list_resource_tags(KeyId=key_id)["Tags"]
    assert tags == [
        {"TagKey": "env", "TagValue": "dev"},
        {"TagKey": "team", "TagValue": "payments"},
    ]
    kms.tag_resource(
        KeyId=key_id,
        Tags=[{"TagKey": "env", "TagValue": "prod"}, {"TagKey": "owner", "TagValue": "ana"}],
    )
    kms.untag_resource(KeyId=key_id, TagKeys=["team"])
    first = kms.list_resource_tags(KeyId=key_id, Limit=1)
    assert first["Tags"] == [{"TagKey": "env", "TagValue": "prod"}] and first["Truncated"]
    rest = kms.list_resource_tags(KeyId=key_id, Marker=first["NextMarker"])
    assert rest["Tags"] == [{"TagKey": "owner", "TagValue": "ana"}] and not rest["Truncated"]
    with pytest.raises(ClientError) as reserved:
        kms.tag_resource(KeyId=key_id, Tags=[{"TagKey": "aws:owner", "TagValue": "x"}])
    assert code(reserved) == "TagException"
    with pytest.raises(ClientError) as too_many:
        kms.tag_resource(
            KeyId=key_id, Tags=[{"TagKey": f"k{i}", "TagValue": ""} for i in range(50)]
        )
    assert code(too_many) == "TagException"
    assert len(kms.list_resource_tags(KeyId=key_id)["Tags"]) == 2  # all or nothing


def test_aliases_update_and_description(kms: Any) -> None:
    first, second = new_key(kms, Description="first"), new_key(kms)
    kms.create_alias(AliasName="alias/moving", TargetKeyId=first)
    blob = kms.encrypt(KeyId="alias/moving", Plaintext=b"one")["CiphertextBlob"]
    kms.update_alias(AliasName="alias/moving", TargetKeyId=second)
    assert kms.describe_key(KeyId="alias/moving")["KeyMetadata"]["KeyId"] == second
    assert kms.decrypt(CiphertextBlob=blob)["KeyId"].endswith(first)
    (entry,) = kms.list_aliases(KeyId=second)["Aliases"]
    assert entry["AliasArn"] == "arn:aws:kms:us-east-1:111122223333:alias/moving"
    assert entry["LastUpdatedDate"] >= entry["CreationDate"]
    with pytest.raises(ClientError) as missing:
        kms.update_alias(AliasName="alias/none", TargetKeyId=second)
    assert code(missing) == "NotFoundException"
    assert message(missing) == "Alias arn:aws:kms:us-east-1:111122223333:alias/none is not found."
    with pytest.raises(ClientError) as prefix:
        kms.create_alias(AliasName="moving", TargetKeyId=first)
    assert code(prefix) == "ValidationException"
    assert message(prefix).startswith('Alias must start with the prefix "alias/".')
    with pytest.raises(ClientError) as reserved:
        kms.create_alias(AliasName="alias/aws/mine", TargetKeyId=first)
    assert code(reserved) == "InvalidAliasNameException"
    with pytest.raises(ClientError) as taken:
        kms.create_alias(AliasName="alias/moving", TargetKeyId=first)
    assert code(taken) == "AlreadyExistsException"
    kms.update_key_description(KeyId=first, Description="renamed")
    assert kms.describe_key(KeyId=first)["KeyMetadata"]["Description"] == "renamed"
    kms.schedule_key_deletion(KeyId=first, PendingWindowInDays=7)
    with pytest.raises(ClientError) as pending:
        kms.update_key_description(KeyId=first, Description="again")
    assert code(pending) == "KMSInvalidStateException"


def test_rotation_keeps_old_ciphertexts(kms: Any) -> None:
    key_id = new_key(kms)
    before = kms.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"]
    assert len(before) == 64
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"old")["CiphertextBlob"]
    with pytest.raises(ClientError) as too_short:
        kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=89)
    assert message(too_short) == (
        "1 validation error detected: Value '89' at 'rotationPeriodInDays' failed to satisfy "
        "constraint: Member must have value greater than or equal to 90"
    )
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=180)
    status = kms.get_key_rotation_status(KeyId=key_id)
    assert status["KeyRotationEnabled"] and status["RotationPeriodInDays"] == 180
    assert status["KeyId"].endswith(key_id)
    created = kms.describe_key(KeyId=key_id)["KeyMetadata"]["CreationDate"]
    days = (status["NextRotationDate"] - created).total_seconds() / 86_400
    assert 179.9 < days < 180.1
    assert kms.rotate_key_on_demand(KeyId=key_id)["KeyId"] == key_id
    after = kms.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"]
    assert after != before
    old = kms.decrypt(CiphertextBlob=blob)
    assert old["Plaintext"] == b"old" and old["KeyMaterialId"] == before
    new_blob = kms.encrypt(KeyId=key_id, Plaintext=b"new")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=new_blob)["KeyMaterialId"] == after
    (rotation,) = kms.list_key_rotations(KeyId=key_id)["Rotations"]
    assert rotation["RotationType"] == "ON_DEMAND" and rotation["KeyMaterialId"] == after
    every = kms.list_key_rotations(KeyId=key_id, IncludeKeyMaterial="ALL_KEY_MATERIAL")
    assert [r["KeyMaterialState"] for r in every["Rotations"]] == ["NON_CURRENT", "CURRENT"]
    kms.disable_key_rotation(KeyId=key_id)
    disabled_status = kms.get_key_rotation_status(KeyId=key_id)
    assert disabled_status["KeyRotationEnabled"] is False
    assert "NextRotationDate" not in disabled_status
    kms.disable_key(KeyId=key_id)
    with pytest.raises(ClientError) as disabled:
        kms.rotate_key_on_demand(KeyId=key_id)
    assert code(disabled) == "DisabledException"


def test_disabled_key_answers_disabled_exception(kms: Any) -> None:
    key_id = new_key(kms)
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"]
    kms.disable_key(KeyId=key_id)
    calls: list[tuple[str, dict[str, Any]]] = [
        ("encrypt", {"KeyId": key_id, "Plaintext": b"x"}),
        ("decrypt", {"CiphertextBlob": blob}),
        ("re_encrypt", {"CiphertextBlob": blob, "DestinationKeyId": key_id}),
        ("generate_data_key", {"KeyId": key_id, "KeySpec": "AES_256"}),
        ("generate_data_key_without_plaintext", {"KeyId": key_id, "NumberOfBytes": 16}),
    ]
    for name, params in calls:
        with pytest.raises(ClientError) as refused:
            getattr(kms, name)(**params)
        assert code(refused) == "DisabledException", name
    kms.enable_key(KeyId=key_id)
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"x"


def test_regions_are_separate(emulator: Emulator, kms: Any) -> None:
    west = emulator.client(region="eu-west-1")
    key_id = new_key(kms)
    arn = kms.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    for reference in (key_id, arn):
        with pytest.raises(ClientError) as elsewhere:
            west.describe_key(KeyId=reference)
        assert code(elsewhere) == "NotFoundException"
    assert key_id not in [k["KeyId"] for k in west.list_keys(Limit=1000)["Keys"]]
    west_key = west.create_key()["KeyMetadata"]
    assert west_key["Arn"].startswith("arn:aws:kms:eu-west-1:111122223333:key/")
    west.create_alias(AliasName="alias/regional", TargetKeyId=west_key["KeyId"])
    kms.create_alias(AliasName="alias/regional", TargetKeyId=key_id)  # same name, other region
    assert west.describe_key(KeyId="alias/regional")["KeyMetadata"]["KeyId"] == west_key["KeyId"]
    blob = kms.encrypt(KeyId="alias/regional", Plaintext=b"east")["CiphertextBlob"]
    with pytest.raises(ClientError) as foreign:
        west.decrypt(CiphertextBlob=blob)
    assert code(foreign) == "InvalidCiphertextException"
    with pytest.raises(ClientError) as cross_alias:
        kms.encrypt(KeyId="arn:aws:kms:eu-west-1:111122223333:alias/regional", Plaintext=b"x")
    assert code(cross_alias) == "NotFoundException"


def test_multi_region_keys_and_deletion_window(kms: Any) -> None:
    metadata = kms.create_key(MultiRegion=True)["KeyMetadata"]
    assert metadata["KeyId"].startswith("mrk-") and metadata["MultiRegion"] is True
    assert metadata["MultiRegionConfiguration"]["MultiRegionKeyType"] == "PRIMARY"
    blob = kms.encrypt(KeyId=metadata["Arn"], Plaintext=b"m")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"m"
    with pytest.raises(ClientError) as window:
        kms.schedule_key_deletion(KeyId=metadata["KeyId"], PendingWindowInDays=31)
    assert "Member must have value less than or equal to 30" in message(window)


def test_answers_conform_to_the_service_model(emulator: Emulator) -> None:
    # Every earlier test's answers went through the check; make sure it ran for each family.
    families = {
        "CreateKey",
        "GetKeyPolicy",
        "ListResourceTags",
        "ListAliases",
        "ListKeys",
        "GetKeyRotationStatus",
        "ListKeyRotations",
        "Decrypt",
    }
    assert families <= set(emulator.checked)


def test_aws_cli_create_key_with_tags_and_policy(emulator: Emulator, tmp_path: Path) -> None:
    import os
    import subprocess

    from tests.proxy_process import XKS_PROXY

    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"Version": "2012-10-17", "Statement": []}))
    environment = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "AKIDCLI",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
    }

    def aws(*args: str) -> Any:
        done = subprocess.run(
            [
                str(Path(XKS_PROXY).parent / "aws"),
                "kms",
                *args,
                "--endpoint-url",
                emulator.url,
                "--output",
                "json",
            ],
            capture_output=True,
            text=True,
            env=environment,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if done.stdout.strip() else None

    created = aws(
        "create-key",
        "--tags",
        "TagKey=app,TagValue=cli",
        "--policy",
        f"file://{policy}",
        "--description",
        "from the cli",
    )
    key_id = created["KeyMetadata"]["KeyId"]
    assert aws("list-resource-tags", "--key-id", key_id)["Tags"] == [
        {"TagKey": "app", "TagValue": "cli"}
    ]
    assert json.loads(
        aws("get-key-policy", "--key-id", key_id, "--policy-name", "default")["Policy"]
    ) == json.loads(policy.read_text())


def test_explicit_deny_in_the_key_policy(kms: Any) -> None:
    key_id = new_key(kms)
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"before")["CiphertextBlob"]
    allow = {
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
        "Action": "kms:*",
        "Resource": "*",
    }
    deny = {
        "Effect": "Deny",
        "Principal": {"AWS": "arn:aws:iam::111122223333:user/AKIDEXAMPLEDEVELOPER"},
        "Action": ["kms:Encrypt", "kms:Decrypt"],
        "Resource": "*",
    }
    conditional = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "kms:Describe*",
        "Resource": "*",
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }
    kms.put_key_policy(KeyId=key_id, Policy=json.dumps({"Statement": [allow, deny, conditional]}))
    for name, params in (
        ("encrypt", {"KeyId": key_id, "Plaintext": b"x"}),
        ("decrypt", {"CiphertextBlob": blob}),
    ):
        with pytest.raises(ClientError) as denied:
            getattr(kms, name)(**params)
        assert code(denied) == "AccessDeniedException"
        assert "with an explicit deny in a resource-based policy" in message(denied)
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyId"] == key_id  # not denied
    assert kms.generate_data_key(KeyId=key_id, NumberOfBytes=16)["KeyId"].endswith(key_id)
    kms.put_key_policy(KeyId=key_id, Policy=json.dumps({"Statement": [allow]}))
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"before"


def test_key_last_usage(kms: Any) -> None:
    key_id = new_key(kms)
    fresh = kms.get_key_last_usage(KeyId=key_id)
    assert fresh["KeyLastUsage"] == {} and fresh["TrackingStartDate"] == fresh["KeyCreationDate"]
    kms.describe_key(KeyId=key_id)  # not a cryptographic operation
    assert kms.get_key_last_usage(KeyId=key_id)["KeyLastUsage"] == {}
    encrypted = kms.encrypt(KeyId=key_id, Plaintext=b"x")
    used = kms.get_key_last_usage(KeyId=key_id)["KeyLastUsage"]
    assert used["Operation"] == "Encrypt"
    assert used["KmsRequestId"] == encrypted["ResponseMetadata"]["RequestId"]
    other = new_key(kms)
    kms.re_encrypt(CiphertextBlob=encrypted["CiphertextBlob"], DestinationKeyId=other)
    for key in (key_id, other):
        assert kms.get_key_last_usage(KeyId=key)["KeyLastUsage"]["Operation"] == "ReEncrypt"
