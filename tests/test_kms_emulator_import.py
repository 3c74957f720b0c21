"""Imported key material (Origin EXTERNAL) through boto3, the material wrapped by ``openssl`` the
way the AWS KMS Developer Guide shows it ("Encrypt key material")."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.kms_emulator_helpers import code, module_emulator

emulator, kms = module_emulator()


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def wrap(directory: Path, parameters: dict[str, Any], material: bytes, algorithm: str) -> bytes:
    """EncryptedKeyMaterial for ``material`` under the public key of ``parameters``."""
    public = directory / "wrapping-key.der"
    public.write_bytes(parameters["PublicKey"])
    digest = "sha256" if algorithm.endswith("SHA_256") else "sha1"
    oaep = [
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        f"rsa_oaep_md:{digest}",
        "-pkeyopt",
        f"rsa_mgf1_md:{digest}",
    ]
    (directory / "material.bin").write_bytes(material)
    encrypt = ["pkeyutl", "-encrypt", "-pubin", "-keyform", "DER", "-inkey", str(public), *oaep]
    if algorithm.startswith("RSAES_OAEP"):
        openssl(*encrypt, "-in", str(directory / "material.bin"), "-out", str(directory / "w"))
        return (directory / "w").read_bytes()
    # RSA_AES_KEY_WRAP: an ephemeral AES-256 key wraps the material (RFC 5649), RSA-OAEP wraps
    # the ephemeral key; the two are concatenated. (A throwaway test key on argv, as AWS shows.)
    ephemeral = os.urandom(32)
    (directory / "aes.bin").write_bytes(ephemeral)
    openssl(
        "enc",
        "-id-aes256-wrap-pad",
        "-K",
        ephemeral.hex(),
        "-iv",
        "A65959A6",
        "-in",
        str(directory / "material.bin"),
        "-out",
        str(directory / "m.wrapped"),
    )
    openssl(*encrypt, "-in", str(directory / "aes.bin"), "-out", str(directory / "k.wrapped"))
    return (directory / "k.wrapped").read_bytes() + (directory / "m.wrapped").read_bytes()


def import_material(
    kms: Any,
    key_id: str,
    directory: Path,
    material: bytes,
    algorithm: str,
    spec: str = "RSA_2048",
    **expiry: Any,
) -> dict[str, Any]:
    parameters = kms.get_parameters_for_import(
        KeyId=key_id, WrappingAlgorithm=algorithm, WrappingKeySpec=spec
    )
    return dict(
        kms.import_key_material(
            KeyId=key_id,
            ImportToken=parameters["ImportToken"],
            EncryptedKeyMaterial=wrap(directory, parameters, material, algorithm),
            **expiry,
        )
    )


def state(kms: Any, key_id: str) -> str:
    return str(kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"])


def test_import_delete_and_reimport_the_same_material(kms: Any, tmp_path: Path) -> None:
    metadata = kms.create_key(Origin="EXTERNAL", Description="imported")["KeyMetadata"]
    key_id = metadata["KeyId"]
    assert (metadata["Origin"], metadata["KeyState"], metadata["Enabled"]) == (
        "EXTERNAL",
        "PendingImport",
        False,
    )
    with pytest.raises(ClientError) as pending:
        kms.encrypt(KeyId=key_id, Plaintext=b"x")
    assert code(pending) == "KMSInvalidStateException"
    material = os.urandom(32)
    valid_to = datetime.now(UTC) + timedelta(days=30)
    imported = import_material(
        kms, key_id, tmp_path, material, "RSAES_OAEP_SHA_256", ValidTo=valid_to
    )
    described = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert described["KeyState"] == "Enabled"
    assert described["ExpirationModel"] == "KEY_MATERIAL_EXPIRES"
    assert abs((described["ValidTo"] - valid_to).total_seconds()) < 1
    assert described["CurrentKeyMaterialId"] == imported["KeyMaterialId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"under imported material")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"under imported material"

    kms.delete_imported_key_material(KeyId=key_id)
    assert state(kms, key_id) == "PendingImport"
    with pytest.raises(ClientError) as deleted:
        kms.decrypt(CiphertextBlob=blob)
    assert code(deleted) == "KMSInvalidStateException"
    with pytest.raises(ClientError) as other:
        import_material(
            kms,
            key_id,
            tmp_path,
            os.urandom(32),
            "RSA_AES_KEY_WRAP_SHA_256",
            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
        )
    assert code(other) == "IncorrectKeyMaterialException"
    again = import_material(
        kms,
        key_id,
        tmp_path,
        material,
        "RSA_AES_KEY_WRAP_SHA_256",
        spec="RSA_3072",
        ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
    )
    assert again["KeyMaterialId"] == imported["KeyMaterialId"]
    described = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert described["KeyState"] == "Enabled" and "ValidTo" not in described
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"under imported material"


@pytest.mark.parametrize("algorithm", ["RSAES_OAEP_SHA_1", "RSA_AES_KEY_WRAP_SHA_1"])
def test_sha1_wrapping_algorithms(kms: Any, tmp_path: Path, algorithm: str) -> None:
    key_id = kms.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
    import_material(
        kms,
        key_id,
        tmp_path,
        os.urandom(32),
        algorithm,
        ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
    )
    assert state(kms, key_id) == "Enabled"


def test_import_tokens_and_parameters_are_checked(kms: Any, tmp_path: Path) -> None:
    key_id = kms.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
    other = kms.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
    parameters = kms.get_parameters_for_import(
        KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048"
    )
    remaining = (parameters["ParametersValidTo"] - datetime.now(UTC)).total_seconds()
    assert 23.9 * 3600 < remaining <= 24 * 3600  # import parameters live 24 hours
    wrapped = wrap(tmp_path, parameters, os.urandom(32), "RSAES_OAEP_SHA_256")
    with pytest.raises(ClientError) as foreign:
        kms.import_key_material(
            KeyId=other,
            ImportToken=parameters["ImportToken"],
            EncryptedKeyMaterial=wrapped,
            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
        )
    assert code(foreign) == "InvalidImportTokenException"
    with pytest.raises(ClientError) as no_valid_to:
        kms.import_key_material(
            KeyId=key_id, ImportToken=parameters["ImportToken"], EncryptedKeyMaterial=wrapped
        )
    assert code(no_valid_to) == "ValidationException"
    with pytest.raises(ClientError) as garbage:
        kms.import_key_material(
            KeyId=key_id,
            ImportToken=parameters["ImportToken"],
            EncryptedKeyMaterial=os.urandom(256),
            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
        )
    assert code(garbage) == "InvalidCiphertextException"
    kms.import_key_material(
        KeyId=key_id,
        ImportToken=parameters["ImportToken"],
        EncryptedKeyMaterial=wrapped,
        ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
    )
    with pytest.raises(ClientError) as used:
        kms.import_key_material(
            KeyId=key_id,
            ImportToken=parameters["ImportToken"],
            EncryptedKeyMaterial=wrapped,
            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
        )
    assert code(used) == "InvalidImportTokenException"
    local = kms.create_key()["KeyMetadata"]["KeyId"]
    with pytest.raises(ClientError) as not_external:
        kms.get_parameters_for_import(
            KeyId=local, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048"
        )
    assert code(not_external) == "UnsupportedOperationException"
    with pytest.raises(ClientError) as withdrawn:
        kms.get_parameters_for_import(
            KeyId=key_id, WrappingAlgorithm="RSAES_PKCS1_V1_5", WrappingKeySpec="RSA_2048"
        )
    assert code(withdrawn) == "UnsupportedOperationException"
    with pytest.raises(ClientError) as rotation:
        kms.enable_key_rotation(KeyId=key_id)
    assert code(rotation) == "UnsupportedOperationException"


def test_material_expires_back_to_pending_import(kms: Any, tmp_path: Path) -> None:
    key_id = kms.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
    # Long enough for the import (an openssl wrap, three calls) to finish well before it on a
    # loaded machine (`pytest -n`), so the key is seen enabled first: a bound, not a speed.
    valid_to = datetime.now(UTC) + timedelta(seconds=10)
    import_material(kms, key_id, tmp_path, os.urandom(32), "RSAES_OAEP_SHA_256", ValidTo=valid_to)
    assert state(kms, key_id) == "Enabled"
    time.sleep(max(0.0, (valid_to - datetime.now(UTC)).total_seconds()) + 0.5)
    assert state(kms, key_id) == "PendingImport"
