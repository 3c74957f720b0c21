"""Asymmetric and HMAC keys through boto3; signatures and RSA ciphertexts checked independently
with ``cryptography`` and ``openssl`` against the key GetPublicKey returns."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tests.kms_emulator_helpers import code, module_emulator

emulator, kms = module_emulator()


def new_key(kms: Any, spec: str, usage: str) -> str:
    return str(kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["KeyId"])


def openssl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], capture_output=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("spec", "algorithm"),
    [
        ("RSA_2048", "RSASSA_PSS_SHA_256"),
        ("RSA_3072", "RSASSA_PKCS1_V1_5_SHA_384"),
        ("ECC_NIST_P256", "ECDSA_SHA_256"),
        ("ECC_NIST_P384", "ECDSA_SHA_384"),
        ("ECC_SECG_P256K1", "ECDSA_SHA_256"),
    ],
)
def test_signatures_verify_with_openssl(
    kms: Any, tmp_path: Path, spec: str, algorithm: str
) -> None:
    key_id = new_key(kms, spec, "SIGN_VERIFY")
    metadata = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert metadata["KeySpec"] == spec and algorithm in metadata["SigningAlgorithms"]
    public = kms.get_public_key(KeyId=key_id)
    assert public["KeyUsage"] == "SIGN_VERIFY" and algorithm in public["SigningAlgorithms"]
    message = b"a message to sign"
    signature = kms.sign(KeyId=key_id, Message=message, SigningAlgorithm=algorithm)["Signature"]
    (tmp_path / "pub.der").write_bytes(public["PublicKey"])
    (tmp_path / "message").write_bytes(message)
    (tmp_path / "signature").write_bytes(signature)
    digest = "-sha" + algorithm.rsplit("_", 1)[1]
    pss = (
        ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:-1"]
        if "PSS" in algorithm
        else []
    )
    verified = openssl(
        "dgst",
        digest,
        "-verify",
        str(tmp_path / "pub.der"),
        "-keyform",
        "DER",
        *pss,
        "-signature",
        str(tmp_path / "signature"),
        str(tmp_path / "message"),
    )
    assert verified.returncode == 0 and b"Verified OK" in verified.stdout, verified.stderr
    assert (
        kms.verify(KeyId=key_id, Message=message, Signature=signature, SigningAlgorithm=algorithm)[
            "SignatureValid"
        ]
        is True
    )
    with pytest.raises(ClientError) as tampered:
        kms.verify(
            KeyId=key_id, Message=message + b"!", Signature=signature, SigningAlgorithm=algorithm
        )
    assert code(tampered) == "KMSInvalidSignatureException"


def test_digest_messages_and_wrong_algorithms(kms: Any) -> None:
    key_id = new_key(kms, "ECC_NIST_P256", "SIGN_VERIFY")
    digest = hashlib.sha256(b"large document").digest()
    signature = kms.sign(
        KeyId=key_id, Message=digest, MessageType="DIGEST", SigningAlgorithm="ECDSA_SHA_256"
    )["Signature"]
    public = serialization.load_der_public_key(kms.get_public_key(KeyId=key_id)["PublicKey"])
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signature, b"large document", ec.ECDSA(hashes.SHA256()))  # raises if invalid
    with pytest.raises(ClientError) as short:
        kms.sign(
            KeyId=key_id,
            Message=digest[:20],
            MessageType="DIGEST",
            SigningAlgorithm="ECDSA_SHA_256",
        )
    assert code(short) == "ValidationException"
    with pytest.raises(ClientError) as wrong_curve:
        kms.sign(KeyId=key_id, Message=b"m", SigningAlgorithm="ECDSA_SHA_384")
    assert code(wrong_curve) == "InvalidKeyUsageException"
    with pytest.raises(ClientError) as not_encryption:
        kms.encrypt(KeyId=key_id, Plaintext=b"m")
    assert code(not_encryption) == "InvalidKeyUsageException"
    kms.disable_key(KeyId=key_id)
    with pytest.raises(ClientError) as disabled:
        kms.sign(KeyId=key_id, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    assert code(disabled) == "DisabledException"
    with pytest.raises(ClientError) as no_usage:
        kms.create_key(KeySpec="HMAC_256")
    assert code(no_usage) == "ValidationException"
    with pytest.raises(ClientError) as bad_pair:
        kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="ENCRYPT_DECRYPT")
    assert code(bad_pair) == "ValidationException"


def test_rsa_encryption_both_ways(kms: Any, tmp_path: Path) -> None:
    key_id = new_key(kms, "RSA_2048", "ENCRYPT_DECRYPT")
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["EncryptionAlgorithms"] == [
        "RSAES_OAEP_SHA_1",
        "RSAES_OAEP_SHA_256",
    ]
    encrypted = kms.encrypt(
        KeyId=key_id, Plaintext=b"for rsa", EncryptionAlgorithm="RSAES_OAEP_SHA_256"
    )
    assert len(encrypted["CiphertextBlob"]) == 256  # the raw OAEP output, as AWS returns it
    decrypted = kms.decrypt(
        KeyId=key_id,
        CiphertextBlob=encrypted["CiphertextBlob"],
        EncryptionAlgorithm="RSAES_OAEP_SHA_256",
    )
    assert decrypted["Plaintext"] == b"for rsa" and "KeyMaterialId" not in decrypted
    # Encrypted outside KMS with the public key, decrypted by KMS.
    (tmp_path / "pub.der").write_bytes(kms.get_public_key(KeyId=key_id)["PublicKey"])
    (tmp_path / "plain").write_bytes(b"from openssl")
    wrapped = openssl(
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-keyform",
        "DER",
        "-inkey",
        str(tmp_path / "pub.der"),
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        "rsa_oaep_md:sha1",
        "-in",
        str(tmp_path / "plain"),
    )
    assert wrapped.returncode == 0, wrapped.stderr
    assert (
        kms.decrypt(
            KeyId=key_id, CiphertextBlob=wrapped.stdout, EncryptionAlgorithm="RSAES_OAEP_SHA_1"
        )["Plaintext"]
        == b"from openssl"
    )
    with pytest.raises(ClientError) as too_long:
        kms.encrypt(KeyId=key_id, Plaintext=b"x" * 191, EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert code(too_long) == "ValidationException"
    with pytest.raises(ClientError) as no_key:
        kms.decrypt(
            CiphertextBlob=encrypted["CiphertextBlob"], EncryptionAlgorithm="RSAES_OAEP_SHA_256"
        )
    assert code(no_key) == "ValidationException"
    with pytest.raises(ClientError) as symmetric_algorithm:
        kms.encrypt(KeyId=key_id, Plaintext=b"x")
    assert code(symmetric_algorithm) == "InvalidKeyUsageException"


def test_hmac_keys(kms: Any) -> None:
    key_id = new_key(kms, "HMAC_384", "GENERATE_VERIFY_MAC")
    metadata = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert metadata["MacAlgorithms"] == ["HMAC_SHA_384"] and "CurrentKeyMaterialId" not in metadata
    mac = kms.generate_mac(KeyId=key_id, Message=b"token", MacAlgorithm="HMAC_SHA_384")["Mac"]
    assert len(mac) == 48
    assert (
        kms.verify_mac(KeyId=key_id, Message=b"token", Mac=mac, MacAlgorithm="HMAC_SHA_384")[
            "MacValid"
        ]
        is True
    )
    with pytest.raises(ClientError) as forged:
        kms.verify_mac(KeyId=key_id, Message=b"token!", Mac=mac, MacAlgorithm="HMAC_SHA_384")
    assert code(forged) == "KMSInvalidMacException"
    with pytest.raises(ClientError) as wrong:
        kms.generate_mac(KeyId=key_id, Message=b"token", MacAlgorithm="HMAC_SHA_256")
    assert code(wrong) == "InvalidKeyUsageException"
    with pytest.raises(ClientError) as no_public:
        kms.get_public_key(KeyId=key_id)
    assert code(no_public) == "UnsupportedOperationException"
    other = new_key(kms, "HMAC_384", "GENERATE_VERIFY_MAC")
    assert (
        kms.generate_mac(KeyId=other, Message=b"token", MacAlgorithm="HMAC_SHA_384")["Mac"] != mac
    )


@pytest.mark.parametrize("pair_spec", ["ECC_NIST_P256", "RSA_2048"])
def test_data_key_pairs(kms: Any, pair_spec: str) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    pair = kms.generate_data_key_pair(
        KeyId=key_id, KeyPairSpec=pair_spec, EncryptionContext={"use": "pair"}
    )
    private = serialization.load_der_private_key(pair["PrivateKeyPlaintext"], password=None)
    derived = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert derived == pair["PublicKey"] and pair["KeyPairSpec"] == pair_spec
    if isinstance(private, rsa.RSAPrivateKey):
        signature = private.sign(b"m", padding.PKCS1v15(), hashes.SHA256())
        assert len(signature) == 256
    opened = kms.decrypt(
        CiphertextBlob=pair["PrivateKeyCiphertextBlob"], EncryptionContext={"use": "pair"}
    )
    assert opened["Plaintext"] == pair["PrivateKeyPlaintext"]
    bare = kms.generate_data_key_pair_without_plaintext(KeyId=key_id, KeyPairSpec=pair_spec)
    assert "PrivateKeyPlaintext" not in bare and bare["PublicKey"] != pair["PublicKey"]
    signing = new_key(kms, "ECC_NIST_P256", "SIGN_VERIFY")
    with pytest.raises(ClientError) as not_symmetric:
        kms.generate_data_key_pair(KeyId=signing, KeyPairSpec=pair_spec)
    assert code(not_symmetric) == "InvalidKeyUsageException"


def test_derive_shared_secret_agrees_with_the_peer(kms: Any) -> None:
    key_id = new_key(kms, "ECC_NIST_P384", "KEY_AGREEMENT")
    metadata = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert metadata["KeyAgreementAlgorithms"] == ["ECDH"] and "SigningAlgorithms" not in metadata
    peer = ec.generate_private_key(ec.SECP384R1())
    peer_public = peer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    derived = kms.derive_shared_secret(
        KeyId=key_id, KeyAgreementAlgorithm="ECDH", PublicKey=peer_public
    )
    kms_public = serialization.load_der_public_key(kms.get_public_key(KeyId=key_id)["PublicKey"])
    assert isinstance(kms_public, ec.EllipticCurvePublicKey)
    assert derived["SharedSecret"] == peer.exchange(ec.ECDH(), kms_public)
    assert derived["KeyOrigin"] == "AWS_KMS"
    other_curve = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ClientError) as mismatch:
        kms.derive_shared_secret(KeyId=key_id, KeyAgreementAlgorithm="ECDH", PublicKey=other_curve)
    assert code(mismatch) == "InvalidKeyUsageException"
    signing = new_key(kms, "ECC_NIST_P384", "SIGN_VERIFY")
    with pytest.raises(ClientError) as not_agreement:
        kms.derive_shared_secret(KeyId=signing, KeyAgreementAlgorithm="ECDH", PublicKey=peer_public)
    assert code(not_agreement) == "InvalidKeyUsageException"


def test_ed25519_and_ml_dsa_signatures(kms: Any, tmp_path: Path) -> None:
    ed = new_key(kms, "ECC_NIST_EDWARDS25519", "SIGN_VERIFY")
    message = b"post-quantum is coming"
    signature = kms.sign(KeyId=ed, Message=message, SigningAlgorithm="ED25519_SHA_512")["Signature"]
    (tmp_path / "pub.der").write_bytes(kms.get_public_key(KeyId=ed)["PublicKey"])
    (tmp_path / "message").write_bytes(message)
    (tmp_path / "signature").write_bytes(signature)
    verified = openssl(
        "pkeyutl",
        "-verify",
        "-pubin",
        "-keyform",
        "DER",
        "-inkey",
        str(tmp_path / "pub.der"),
        "-rawin",
        "-in",
        str(tmp_path / "message"),
        "-sigfile",
        str(tmp_path / "signature"),
    )
    assert verified.returncode == 0 and b"Signature Verified Successfully" in verified.stdout
    with pytest.raises(ClientError) as digest:
        kms.sign(
            KeyId=ed,
            Message=hashlib.sha512(message).digest(),
            MessageType="DIGEST",
            SigningAlgorithm="ED25519_SHA_512",
        )
    assert code(digest) == "ValidationException"
    ml_dsa = new_key(kms, "ML_DSA_65", "SIGN_VERIFY")
    assert kms.describe_key(KeyId=ml_dsa)["KeyMetadata"]["SigningAlgorithms"] == [
        "ML_DSA_SHAKE_256"
    ]
    signed = kms.sign(KeyId=ml_dsa, Message=message, SigningAlgorithm="ML_DSA_SHAKE_256")
    public = serialization.load_der_public_key(kms.get_public_key(KeyId=ml_dsa)["PublicKey"])
    public.verify(signed["Signature"], message)  # type: ignore[union-attr,call-arg]  # raises if bad
    with pytest.raises(ClientError) as tampered:
        kms.verify(
            KeyId=ml_dsa,
            Message=message + b".",
            Signature=signed["Signature"],
            SigningAlgorithm="ML_DSA_SHAKE_256",
        )
    assert code(tampered) == "KMSInvalidSignatureException"
    with pytest.raises(ClientError) as short_mu:
        kms.sign(
            KeyId=ml_dsa,
            Message=b"m" * 32,
            MessageType="EXTERNAL_MU",
            SigningAlgorithm="ML_DSA_SHAKE_256",
        )
    assert code(short_mu) == "ValidationException"


def test_ml_kem_encapsulation(kms: Any) -> None:
    from cryptography.hazmat.primitives.asymmetric import mlkem

    key_id = new_key(kms, "ML_KEM_768", "ENCAPSULATE_DECAPSULATE")
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["EncapsulationAlgorithms"] == ["ML_KEM"]
    made = kms.encapsulate(KeyId=key_id, EncapsulationAlgorithm="ML_KEM")
    opened = kms.decapsulate(
        KeyId=key_id,
        EncapsulationAlgorithm="ML_KEM",
        SharedSecretCiphertextBlob=made["SharedSecretCiphertextBlob"],
    )
    assert opened["SharedSecret"] == made["SharedSecret"] and len(made["SharedSecret"]) == 32
    public = serialization.load_der_public_key(kms.get_public_key(KeyId=key_id)["PublicKey"])
    assert isinstance(public, mlkem.MLKEM768PublicKey)
    secret, ciphertext = public.encapsulate()  # outside KMS, with the public key
    assert (
        kms.decapsulate(
            KeyId=key_id, EncapsulationAlgorithm="ML_KEM", SharedSecretCiphertextBlob=ciphertext
        )["SharedSecret"]
        == secret
    )
    with pytest.raises(ClientError) as truncated:
        kms.decapsulate(
            KeyId=key_id,
            EncapsulationAlgorithm="ML_KEM",
            SharedSecretCiphertextBlob=ciphertext[:100],
        )
    assert code(truncated) == "InvalidCiphertextException"
    with pytest.raises(ClientError) as unsupported:
        kms.create_key(KeySpec="ML_KEM_512", KeyUsage="ENCAPSULATE_DECAPSULATE")
    assert code(unsupported) == "UnsupportedOperationException"
