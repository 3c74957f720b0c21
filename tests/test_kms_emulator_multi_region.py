"""Multi-Region keys through boto3: ReplicateKey, decryption across regions, rotation shared
with the replicas, UpdatePrimaryRegion."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.kms_emulator_helpers import Emulator, code, module_emulator, new_key

emulator, kms = module_emulator()


def test_replicas_share_material_and_rotation(emulator: Emulator, kms: Any) -> None:
    west = emulator.client(region="eu-west-1")
    primary = kms.create_key(MultiRegion=True, Description="primary")["KeyMetadata"]
    key_id = primary["KeyId"]
    replicated = kms.replicate_key(
        KeyId=key_id,
        ReplicaRegion="eu-west-1",
        Description="replica",
        Tags=[{"TagKey": "site", "TagValue": "dublin"}],
    )
    replica = replicated["ReplicaKeyMetadata"]
    assert replica["KeyId"] == key_id and replica["Arn"].startswith("arn:aws:kms:eu-west-1:")
    assert replica["MultiRegionConfiguration"]["MultiRegionKeyType"] == "REPLICA"
    assert replica["MultiRegionConfiguration"]["PrimaryKey"]["Arn"] == primary["Arn"]
    assert replicated["ReplicaTags"] == [{"TagKey": "site", "TagValue": "dublin"}]
    east_view = kms.describe_key(KeyId=key_id)["KeyMetadata"]["MultiRegionConfiguration"]
    assert east_view["ReplicaKeys"] == [{"Arn": replica["Arn"], "Region": "eu-west-1"}]
    assert west.describe_key(KeyId=key_id)["KeyMetadata"]["Description"] == "replica"
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"across regions")["CiphertextBlob"]
    assert west.decrypt(CiphertextBlob=blob)["Plaintext"] == b"across regions"
    back = west.encrypt(KeyId=key_id, Plaintext=b"and back")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=back)["Plaintext"] == b"and back"
    with pytest.raises(ClientError) as twice:
        kms.replicate_key(KeyId=key_id, ReplicaRegion="eu-west-1")
    assert code(twice) == "AlreadyExistsException"
    with pytest.raises(ClientError) as single:
        kms.replicate_key(KeyId=new_key(kms), ReplicaRegion="eu-west-1")
    assert code(single) == "UnsupportedOperationException"
    # Rotation is managed on the primary and reaches the replica.
    with pytest.raises(ClientError) as on_replica:
        west.rotate_key_on_demand(KeyId=key_id)
    assert code(on_replica) == "UnsupportedOperationException"
    kms.rotate_key_on_demand(KeyId=key_id)
    current = kms.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"]
    assert west.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"] == current
    assert west.decrypt(CiphertextBlob=blob)["Plaintext"] == b"across regions"
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=100)
    assert west.get_key_rotation_status(KeyId=key_id)["RotationPeriodInDays"] == 100
    # The primary moves; rotation settings go with it.
    kms.update_primary_region(KeyId=key_id, PrimaryRegion="eu-west-1")
    assert (
        west.describe_key(KeyId=key_id)["KeyMetadata"]["MultiRegionConfiguration"][
            "MultiRegionKeyType"
        ]
        == "PRIMARY"
    )
    assert (
        kms.describe_key(KeyId=key_id)["KeyMetadata"]["MultiRegionConfiguration"][
            "MultiRegionKeyType"
        ]
        == "REPLICA"
    )
    assert kms.get_key_rotation_status(KeyId=key_id)["RotationPeriodInDays"] == 100
    with pytest.raises(ClientError) as nowhere:
        west.update_primary_region(KeyId=key_id, PrimaryRegion="ap-east-1")
    assert code(nowhere) == "NotFoundException"
