"""Key specs: which key usages each allows, its algorithms, and how its material is made and
used (AWS KMS Developer Guide, "Key spec reference").

- SYMMETRIC_DEFAULT: ENCRYPT_DECRYPT, AES-256-GCM (the emulator's inner layer).
- RSA_2048/3072/4096: ENCRYPT_DECRYPT (RSAES_OAEP_SHA_1/256) or SIGN_VERIFY (RSASSA_PSS_* and
  RSASSA_PKCS1_V1_5_* with SHA-256/384/512; PSS salt length = digest length, as AWS uses).
- ECC_NIST_P256/P384/P521, ECC_SECG_P256K1: SIGN_VERIFY with ECDSA (one digest per curve);
  the NIST curves also KEY_AGREEMENT (ECDH, DeriveSharedSecret).
- HMAC_224/256/384/512: GENERATE_VERIFY_MAC, a key of that many bits.
- ECC_NIST_EDWARDS25519 and ML_DSA_44/65/87: SIGN_VERIFY (``signing``).
- ML_KEM_768/1024: ENCAPSULATE_DECAPSULATE (``kem``). Not ML_KEM_512: the cryptography library
  has no ML-KEM-512.

Asymmetric material is kept as PKCS#8 DER, HMAC material as raw bytes (both Base64).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, mlkem, rsa

from xks_proxy.kms_emulator.shapes import service_model

SYMMETRIC_DEFAULT = "SYMMETRIC_DEFAULT"
ENCRYPT_DECRYPT = "ENCRYPT_DECRYPT"
SIGN_VERIFY = "SIGN_VERIFY"
GENERATE_VERIFY_MAC = "GENERATE_VERIFY_MAC"
KEY_AGREEMENT = "KEY_AGREEMENT"
ENCAPSULATE_DECAPSULATE = "ENCAPSULATE_DECAPSULATE"

_RSA_SIGNING = tuple(f"{scheme}_SHA_{bits}" for scheme in ("RSASSA_PSS", "RSASSA_PKCS1_V1_5")
                     for bits in (256, 384, 512))  # fmt: skip
DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "SHA_1": hashes.SHA1, "SHA_224": hashes.SHA224, "SHA_256": hashes.SHA256,
    "SHA_384": hashes.SHA384, "SHA_512": hashes.SHA512,
}  # fmt: skip


PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | mldsa.MLDSA44PrivateKey
    | mldsa.MLDSA65PrivateKey
    | mldsa.MLDSA87PrivateKey
    | mlkem.MLKEM768PrivateKey
    | mlkem.MLKEM1024PrivateKey
)


@dataclass(frozen=True)
class KeySpec:
    name: str
    usages: tuple[str, ...]
    encryption: tuple[str, ...] = ()
    signing: tuple[str, ...] = ()
    mac: tuple[str, ...] = ()
    rsa_bits: int = 0
    curve: type[ec.EllipticCurve] | None = None
    mac_bytes: int = 0
    generator: Callable[[], PrivateKey] | None = None  # Ed25519, ML-DSA, ML-KEM

    @property
    def asymmetric(self) -> bool:
        return bool(self.rsa_bits or self.curve or self.generator)

    def algorithms(self, usage: str) -> dict[str, list[str]]:
        """The KeyMetadata/GetPublicKey algorithm lists for a key of this spec and usage."""
        if usage == ENCRYPT_DECRYPT:
            return {"EncryptionAlgorithms": list(self.encryption)}
        if usage == SIGN_VERIFY:
            return {"SigningAlgorithms": list(self.signing)}
        if usage == KEY_AGREEMENT:
            return {"KeyAgreementAlgorithms": ["ECDH"]}
        if usage == ENCAPSULATE_DECAPSULATE:
            return {"EncapsulationAlgorithms": ["ML_KEM"]}
        return {"MacAlgorithms": list(self.mac)}

    def generate(self) -> bytes:
        """Fresh material: PKCS#8 DER for asymmetric keys, random bytes for HMAC and AES."""
        private: PrivateKey
        if self.rsa_bits:
            private = rsa.generate_private_key(public_exponent=65537, key_size=self.rsa_bits)
        elif self.generator is not None:
            private = self.generator()
        elif self.curve is not None:
            private = ec.generate_private_key(self.curve())
        else:
            return secrets.token_bytes(self.mac_bytes or 32)
        return private.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )  # fmt: skip


def _ecc(name: str, curve: type[ec.EllipticCurve], digest: int) -> KeySpec:
    # NIST curves also agree keys (ECDH); secp256k1 only signs (Key spec reference).
    usages = (SIGN_VERIFY, KEY_AGREEMENT) if name.startswith("ECC_NIST") else (SIGN_VERIFY,)
    return KeySpec(name, usages, signing=(f"ECDSA_SHA_{digest}",), curve=curve)


def _rsa(bits: int) -> KeySpec:
    return KeySpec(f"RSA_{bits}", (ENCRYPT_DECRYPT, SIGN_VERIFY),
                   encryption=("RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"), signing=_RSA_SIGNING,
                   rsa_bits=bits)  # fmt: skip


def _hmac(bits: int) -> KeySpec:
    return KeySpec(f"HMAC_{bits}", (GENERATE_VERIFY_MAC,), mac=(f"HMAC_SHA_{bits}",),
                   mac_bytes=bits // 8)  # fmt: skip


SPECS: dict[str, KeySpec] = {
    spec.name: spec
    for spec in (
        KeySpec(SYMMETRIC_DEFAULT, (ENCRYPT_DECRYPT,), encryption=(SYMMETRIC_DEFAULT,)),
        _rsa(2048), _rsa(3072), _rsa(4096),
        _ecc("ECC_NIST_P256", ec.SECP256R1, 256), _ecc("ECC_NIST_P384", ec.SECP384R1, 384),
        _ecc("ECC_NIST_P521", ec.SECP521R1, 512), _ecc("ECC_SECG_P256K1", ec.SECP256K1, 256),
        _hmac(224), _hmac(256), _hmac(384), _hmac(512),
        KeySpec("ECC_NIST_EDWARDS25519", (SIGN_VERIFY,),
                signing=("ED25519_SHA_512", "ED25519_PH_SHA_512"),
                generator=ed25519.Ed25519PrivateKey.generate),
        KeySpec("ML_DSA_44", (SIGN_VERIFY,), signing=("ML_DSA_SHAKE_256",),
                generator=mldsa.MLDSA44PrivateKey.generate),
        KeySpec("ML_DSA_65", (SIGN_VERIFY,), signing=("ML_DSA_SHAKE_256",),
                generator=mldsa.MLDSA65PrivateKey.generate),
        KeySpec("ML_DSA_87", (SIGN_VERIFY,), signing=("ML_DSA_SHAKE_256",),
                generator=mldsa.MLDSA87PrivateKey.generate),
        # ML_KEM_512 is missing: the cryptography library implements ML-KEM-768 and -1024 only.
        KeySpec("ML_KEM_768", (ENCAPSULATE_DECAPSULATE,),
                generator=mlkem.MLKEM768PrivateKey.generate),
        KeySpec("ML_KEM_1024", (ENCAPSULATE_DECAPSULATE,),
                generator=mlkem.MLKEM1024PrivateKey.generate),
    )
}  # fmt: skip


def legacy_spec(name: str) -> dict[str, str]:
    """CustomerMasterKeySpec, the deprecated twin of KeySpec: only for the specs it knows."""
    known = service_model()["shapes"]["CustomerMasterKeySpec"]["enum"]
    return {"CustomerMasterKeySpec": name} if name in known else {}


def digest_of(algorithm: str) -> hashes.HashAlgorithm:
    """The hash an algorithm name ends in: ``RSASSA_PSS_SHA_256`` → SHA-256."""
    return DIGESTS["SHA_" + algorithm.rsplit("_", 1)[1]]()


def private_key(der: bytes) -> PrivateKey:
    key = serialization.load_der_private_key(der, password=None)
    assert isinstance(key, PrivateKey)
    return key


def public_der(der: bytes) -> bytes:
    return (
        private_key(der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
