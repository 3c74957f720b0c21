"""What key management accepts and its defaults, apart from the code that acts on them: the
command line offers them in ``--help`` without loading the cryptography, the key store or the
token library that ``service.py`` and ``byok.py`` need.
"""

from __future__ import annotations

# KMS ScheduleKeyDeletion: PendingWindowInDays 7-30, default 30.
MIN_DELETION_DAYS = 7
MAX_DELETION_DAYS = 30
DEFAULT_DELETION_DAYS = 30

# KMS GetParametersForImport: the wrapping algorithms and RSA key specs a proxy offers.
WRAPPING_ALGORITHMS = ("RSAES_OAEP_SHA_256", "RSA_AES_KEY_WRAP_SHA_256")
WRAPPING_KEY_BITS = {"RSA_2048": 2048, "RSA_3072": 3072, "RSA_4096": 4096}
DEFAULT_WRAPPING_KEY_SPEC = "RSA_2048"

# What works for HSM keys, for operators who reach for another `keys` action on one.
HSM_KEYS_HINT = (
    "HSM keys are made with `xks-proxy pkcs11 create-key`; to switch one off, list it in "
    "`disabled_keys` of its key store and run `xks-proxy reload` (the kill switch for every "
    "backend); `keys list` and `keys rotate` work for them (with `--backend NAME` when the "
    "configuration has a software backend too)"
)
