"""Grants through boto3: create (and its idempotent Name), list, retire by token or id, revoke,
and grant tokens accepted on cryptographic calls."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.kms_emulator_helpers import code, module_emulator

emulator, kms = module_emulator()
GRANTEE = "arn:aws:iam::111122223333:role/app"
RETIRER = "arn:aws:iam::111122223333:role/ops"


def test_grant_lifecycle(kms: Any) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    created = kms.create_grant(
        KeyId=key_id,
        GranteePrincipal=GRANTEE,
        RetiringPrincipal=RETIRER,
        Operations=["Encrypt", "Decrypt"],
        Name="app",
        Constraints={"EncryptionContextSubset": {"app": "x"}},
    )
    again = kms.create_grant(
        KeyId=key_id,
        GranteePrincipal=GRANTEE,
        RetiringPrincipal=RETIRER,
        Operations=["Encrypt", "Decrypt"],
        Name="app",
        Constraints={"EncryptionContextSubset": {"app": "x"}},
    )
    assert again["GrantId"] == created["GrantId"]  # the same Name and grant: the same grant
    (entry,) = kms.list_grants(KeyId=key_id)["Grants"]
    assert entry["GranteePrincipal"] == GRANTEE and entry["Operations"] == ["Encrypt", "Decrypt"]
    assert entry["IssuingAccount"] == "arn:aws:iam::111122223333:root"
    assert entry["Constraints"] == {"EncryptionContextSubset": {"app": "x"}}
    blob = kms.encrypt(
        KeyId=key_id,
        Plaintext=b"g",
        GrantTokens=[created["GrantToken"]],
        EncryptionContext={"app": "x"},
    )["CiphertextBlob"]
    assert (
        kms.decrypt(
            CiphertextBlob=blob, EncryptionContext={"app": "x"}, GrantTokens=[created["GrantToken"]]
        )["Plaintext"]
        == b"g"
    )
    retirable = kms.list_retirable_grants(RetiringPrincipal=RETIRER)["Grants"]
    assert [g["GrantId"] for g in retirable] == [created["GrantId"]]
    kms.retire_grant(GrantToken=created["GrantToken"])
    assert kms.list_grants(KeyId=key_id)["Grants"] == []
    with pytest.raises(ClientError) as retired:
        kms.retire_grant(GrantToken=created["GrantToken"])
    assert code(retired) == "InvalidGrantTokenException"
    second = kms.create_grant(KeyId=key_id, GranteePrincipal=GRANTEE, Operations=["Decrypt"])
    arn = kms.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    kms.revoke_grant(KeyId=key_id, GrantId=second["GrantId"])
    with pytest.raises(ClientError) as revoked:
        kms.retire_grant(KeyId=arn, GrantId=second["GrantId"])
    assert code(revoked) == "NotFoundException"


def test_grant_operations_and_paging(kms: Any) -> None:
    signing = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    with pytest.raises(ClientError) as wrong:
        kms.create_grant(KeyId=signing["KeyId"], GranteePrincipal=GRANTEE, Operations=["Encrypt"])
    assert code(wrong) == "ValidationException"
    for _ in range(3):
        kms.create_grant(KeyId=signing["KeyId"], GranteePrincipal=GRANTEE, Operations=["Sign"])
    first = kms.list_grants(KeyId=signing["KeyId"], Limit=2)
    assert len(first["Grants"]) == 2 and first["Truncated"]
    rest = kms.list_grants(KeyId=signing["KeyId"], Marker=first["NextMarker"])
    assert len(rest["Grants"]) == 1 and not rest["Truncated"]
    with pytest.raises(ClientError) as dry:
        kms.create_grant(
            KeyId=signing["KeyId"], GranteePrincipal=GRANTEE, Operations=["Sign"], DryRun=True
        )
    assert code(dry) == "DryRunOperationException"
    assert len(kms.list_grants(KeyId=signing["KeyId"])["Grants"]) == 3
