"""Many threads on one SoftHSM2 token: does the module survive concurrent sessions?

``--raw`` uses python-pkcs11 as it comes (``C_Initialize(NULL)``: no locking promised);
without it the module is loaded through ``xks_proxy.backends.pkcs11_library``, which
initialises it with CKF_OS_LOCKING_OK. Prints "survived" when every thread finished; a crash
ends the process first. Needs SOFTHSM2_CONF, a token and an AES key (see --help).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
from pathlib import Path

import pkcs11
from pkcs11 import Mechanism, ObjectClass

from xks_proxy.backends import pkcs11_library


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--module", default="/usr/lib/softhsm/libsofthsm2.so")
    parser.add_argument("--token", required=True)
    parser.add_argument("--pin", required=True)
    parser.add_argument("--key", required=True, help="label of an AES key on the token")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--raw", action="store_true", help="skip the OS-locking initialisation")
    args = parser.parse_args()
    library = pkcs11.lib(args.module) if args.raw else pkcs11_library.load(Path(args.module))
    token = library.get_token(token_label=args.token)
    login = token.open(user_pin=args.pin)

    def work(_: int) -> None:
        session = token.open()
        for _ in range(args.rounds):
            key = session.get_key(object_class=ObjectClass.SECRET_KEY, label=args.key)
            params = pkcs11_library.GcmParams(os.urandom(12), b"aad")
            key.encrypt(  # type: ignore[attr-defined]
                b"y" * 4096, mechanism=Mechanism.AES_GCM, mechanism_param=params.raw()
            )
            token.open().close()
        session.close()

    with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
        list(pool.map(work, range(args.threads * 4)))
    login.close()
    print("survived")


if __name__ == "__main__":
    main()
