"""A replay of the KMS calls Terraform's AWS provider makes for aws_kms_key, aws_kms_alias and
aws_kms_external_key on create, read (refresh), update and delete, with the parameters it sends
and the checks it makes on the answers (its "wait for propagation" reads included). Before
issue 14 the first read failed: GetKeyPolicy and ListResourceTags were unknown operations."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.kms_emulator_helpers import Emulator, module_emulator

emulator, kms = module_emulator()
ACCOUNT = "111122223333"


def policy(sid: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Id": "tf",
            "Statement": [
                {
                    "Sid": sid,
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                    "Action": "kms:*",
                    "Resource": "*",
                }
            ],
        }
    )


def tags_of(kms: Any, key_id: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for page in kms.get_paginator("list_resource_tags").paginate(KeyId=key_id):
        tags |= {t["TagKey"]: t["TagValue"] for t in page["Tags"]}
    return tags


def read_key(kms: Any, key_id: str) -> dict[str, Any]:
    """findKey: DescribeKey, GetKeyPolicy, GetKeyRotationStatus (AWS_KMS only), tags."""
    metadata = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert metadata["KeyManager"] == "CUSTOMER"
    state: dict[str, Any] = {
        "metadata": metadata,
        "policy": json.loads(kms.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"]),
        "tags": tags_of(kms, key_id),
    }
    if metadata["Origin"] == "AWS_KMS":
        rotation = kms.get_key_rotation_status(KeyId=key_id)
        state["rotation"] = rotation["KeyRotationEnabled"]
        state["rotation_period"] = rotation.get("RotationPeriodInDays")
    return state


def update_tags(kms: Any, key_id: str, old: dict[str, str], new: dict[str, str]) -> None:
    """The provider's UpdateTags: untag the removed keys, then tag the new and changed ones."""
    if removed := [k for k in old if k not in new]:
        kms.untag_resource(KeyId=key_id, TagKeys=removed)
    if changed := {k: v for k, v in new.items() if old.get(k) != v}:
        kms.tag_resource(
            KeyId=key_id, Tags=[{"TagKey": k, "TagValue": v} for k, v in changed.items()]
        )


def delete_key(kms: Any, key_id: str) -> None:
    """ScheduleKeyDeletion, then WaitKeyDeleted (DescribeKey until PendingDeletion)."""
    kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "PendingDeletion"


def test_aws_kms_key_and_alias(emulator: Emulator) -> None:
    kms = emulator.client()
    # Create.
    created = kms.create_key(
        Description="tf key",
        KeyUsage="ENCRYPT_DECRYPT",
        CustomerMasterKeySpec="SYMMETRIC_DEFAULT",
        Policy=policy("one"),
        BypassPolicyLockoutSafetyCheck=False,
        MultiRegion=False,
        Tags=[{"TagKey": "Name", "TagValue": "tf"}],
    )["KeyMetadata"]
    key_id = created["KeyId"]
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=365)
    state = read_key(kms, key_id)
    assert state["policy"] == json.loads(policy("one")) and state["tags"] == {"Name": "tf"}
    assert state["rotation"] is True and state["rotation_period"] == 365
    kms.create_alias(AliasName="alias/tf", TargetKeyId=key_id)
    aliases = [
        a
        for page in kms.get_paginator("list_aliases").paginate()
        for a in page["Aliases"]
        if a["AliasName"] == "alias/tf"
    ]
    assert aliases[0]["TargetKeyId"] == key_id
    assert aliases[0]["AliasArn"] == f"arn:aws:kms:us-east-1:{ACCOUNT}:alias/tf"
    # Update: description, policy, rotation, tags, disable last; the alias to a second key.
    kms.update_key_description(KeyId=key_id, Description="tf key v2")
    kms.put_key_policy(
        KeyId=key_id,
        PolicyName="default",
        Policy=policy("two"),
        BypassPolicyLockoutSafetyCheck=False,
    )
    kms.disable_key_rotation(KeyId=key_id)
    update_tags(kms, key_id, {"Name": "tf"}, {"Name": "tf2", "env": "dev"})
    kms.disable_key(KeyId=key_id)
    state = read_key(kms, key_id)
    assert state["metadata"]["Description"] == "tf key v2" and not state["metadata"]["Enabled"]
    assert state["policy"] == json.loads(policy("two")) and state["rotation"] is False
    assert state["tags"] == {"Name": "tf2", "env": "dev"}
    second = kms.create_key(Description="second")["KeyMetadata"]["KeyId"]
    kms.update_alias(AliasName="alias/tf", TargetKeyId=second)
    assert kms.describe_key(KeyId="alias/tf")["KeyMetadata"]["KeyId"] == second
    # Delete (the provider ignores "is pending deletion" on a second delete).
    kms.delete_alias(AliasName="alias/tf")
    delete_key(kms, key_id)
    try:
        kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
        raise AssertionError("a second deletion must be refused")
    except kms.exceptions.KMSInvalidStateException as error:
        assert "is pending deletion" in str(error)
    delete_key(kms, second)


def import_material(kms: Any, key_id: str, material: bytes, valid_to: datetime | None) -> None:
    """importExternalKeyMaterial: RSA_2048 with RSAES_OAEP_SHA_256, encrypted by the client."""
    parameters = kms.get_parameters_for_import(
        KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048"
    )
    public = serialization.load_der_public_key(parameters["PublicKey"])
    assert isinstance(public, rsa.RSAPublicKey)
    wrapped = public.encrypt(
        material,
        padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    )
    expiry: dict[str, Any] = {"ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"}
    if valid_to is not None:
        expiry = {"ExpirationModel": "KEY_MATERIAL_EXPIRES", "ValidTo": valid_to}
    kms.import_key_material(
        KeyId=key_id, ImportToken=parameters["ImportToken"], EncryptedKeyMaterial=wrapped, **expiry
    )


def test_aws_kms_external_key(emulator: Emulator) -> None:
    kms = emulator.client()
    material = os.urandom(32)
    created = kms.create_key(
        Description="tf external",
        KeyUsage="ENCRYPT_DECRYPT",
        Origin="EXTERNAL",
        Policy=policy("ext"),
        MultiRegion=False,
        BypassPolicyLockoutSafetyCheck=False,
        Tags=[{"TagKey": "Name", "TagValue": "ext"}],
    )["KeyMetadata"]
    key_id = created["KeyId"]
    import_material(kms, key_id, material, None)
    state = read_key(kms, key_id)  # WaitKeyMaterialImported, then the read
    metadata = state["metadata"]
    assert (metadata["Origin"], metadata["KeyState"]) == ("EXTERNAL", "Enabled")
    assert metadata["ExpirationModel"] == "KEY_MATERIAL_DOES_NOT_EXPIRE"
    assert "ValidTo" not in metadata and "rotation" not in state
    assert state["tags"] == {"Name": "ext"} and state["policy"] == json.loads(policy("ext"))
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"tf")["CiphertextBlob"]
    # Update valid_to: the provider imports the same material again with the new expiry.
    valid_to = (datetime.now(UTC) + timedelta(days=90)).replace(microsecond=0)
    import_material(kms, key_id, material, valid_to)
    metadata = read_key(kms, key_id)["metadata"]
    assert metadata["ExpirationModel"] == "KEY_MATERIAL_EXPIRES"
    assert metadata["ValidTo"] == valid_to
    kms.update_key_description(KeyId=key_id, Description="tf external v2")
    kms.disable_key(KeyId=key_id)
    assert read_key(kms, key_id)["metadata"]["Enabled"] is False
    kms.enable_key(KeyId=key_id)
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"tf"
    delete_key(kms, key_id)
