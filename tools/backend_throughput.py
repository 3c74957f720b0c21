"""Encrypt throughput of the PKCS#11 backend (SoftHSM2) as a ratio of the software backend's,
both measured in this one run on this machine.

Each backend encrypts 4 KiB with AAD through its own ``encrypt`` (the HSM one on its thread
pool), with the same number of requests in flight, for the same time. Run from the repository:
``.venv/bin/python -m tools.backend_throughput [--seconds 5] [--concurrency 16]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from tests.softhsm import make_softhsm, provision_conformance_token
from xks_proxy.backends.base import Backend
from xks_proxy.backends.pkcs11 import Pkcs11Backend
from xks_proxy.backends.software import SoftwareBackend
from xks_proxy.config import SoftwareBackendConfig
from xks_proxy.keystore.store import KeyDatabase

PLAINTEXT = os.urandom(4096)
AAD = os.urandom(64)


async def throughput(backend: Backend, key_id: str, seconds: float, concurrency: int) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await backend.encrypt(key_id, PLAINTEXT, AAD)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def main(seconds: float, concurrency: int, sessions: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        hsm = make_softhsm(directory / "softhsm")
        os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
        hsm.init_token("bench")
        provision_conformance_token(hsm, "bench")
        kek = os.urandom(32)
        database = KeyDatabase(directory / "keys.db", kek)
        database.create_key("key-both", frozenset({"ENCRYPT", "DECRYPT"}))
        database.close()
        software = SoftwareBackend(SoftwareBackendConfig("soft", directory / "keys.db", kek))
        pkcs11 = Pkcs11Backend(hsm.backend_config("bench", sessions=sessions))
        results = {}
        for name, backend in (("software", software), ("pkcs11", pkcs11)):
            await backend.open()
            await throughput(backend, "key-both", 0.5, concurrency)  # warm-up
            results[name] = await throughput(backend, "key-both", seconds, concurrency)
            await backend.close()
    print(f"software backend: {results['software']:10.0f} encrypts/s (4 KiB, in process)")
    print(f"pkcs11 (SoftHSM2): {results['pkcs11']:9.0f} encrypts/s ({sessions} sessions)")
    print(f"ratio pkcs11/software: {results['pkcs11'] / results['software']:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sessions", type=int, default=4)
    options = parser.parse_args()
    asyncio.run(main(options.seconds, options.concurrency, options.sessions))
