"""Before/after of each hot-path change of issue 15 that can be timed alone, in one run.

``python -m tools.micro_ab`` prints µs per call for the code before the change (kept here, as a
reference only) and the code the proxy runs now, on a 4 KiB Encrypt request. Both sides run in
the same process, interleaved, the best of several rounds; ``make bench`` measures the whole.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import hmac
import json
import os
import time
import timeit
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pybase64

from xks_proxy import model, sigv4
from xks_proxy.audit import _UtcMilliseconds
from xks_proxy.web.deadline import within_deadline


def _best(action: Callable[[], object], number: int = 5000) -> float:
    return min(timeit.repeat(action, number=number, repeat=7)) / number * 1e6


def _old_duplicates(body: bytes) -> None:
    json.loads(body, object_pairs_hook=model._reject_duplicates)


def _old_base64(value: str) -> bytes:
    decoded = binascii.a2b_base64(value, strict_mode=True)
    if binascii.b2a_base64(decoded, newline=False) != value.encode("ascii"):
        raise ValueError
    return decoded


async def _immediate() -> int:
    return 1


def _deadline_pair() -> tuple[float, float]:
    async def old() -> None:
        async with asyncio.timeout(0.25):
            await _immediate()

    async def new() -> None:
        await within_deadline(_immediate(), 0.25)

    async def measure(step: Callable[[], object]) -> float:
        best = float("inf")
        for _ in range(7):
            started = time.perf_counter()
            for _ in range(5000):
                await step()  # type: ignore[misc]
            best = min(best, (time.perf_counter() - started) / 5000 * 1e6)
        return best

    async def both() -> tuple[float, float]:
        return await measure(old), await measure(new)

    return asyncio.run(both())


def _head_timer_pair() -> tuple[float, float]:
    async def both() -> tuple[float, float]:
        loop = asyncio.get_running_loop()

        def armed() -> None:
            loop.call_later(10, lambda: None).cancel()

        return _best(armed), _best(lambda: None)

    return asyncio.run(both())


def _old_metadata(document: dict[str, Any]) -> None:
    """Before: the audit record's metadata read leniently, then the request's built again."""
    model.audit_metadata(document)
    model._request_metadata(document, model._CRYPTO_FIELDS)


def _histogram_pair() -> tuple[float, float]:
    from prometheus_client import CollectorRegistry, Histogram

    from xks_proxy.counting_histogram import CountingHistogram
    from xks_proxy.metrics import LATENCY_BUCKETS

    labels = ("operation", "key_store", "outcome")
    old = Histogram("h", "h", labels, buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    new = CountingHistogram("h", "h", labels, LATENCY_BUCKETS, CollectorRegistry())
    labelled = ("Encrypt", "dev", "success")
    old_child, new_child = old.labels(*labelled), new.labels(*labelled)
    return _best(lambda: old_child.observe(0.0012)), _best(lambda: new_child.observe(0.0012))


def _in_flight_pair() -> tuple[float, float]:
    from prometheus_client import CollectorRegistry, Gauge

    gauge = Gauge("g", "g", registry=CollectorRegistry())

    def old() -> None:
        gauge.inc()
        gauge.dec()

    count = [0]

    def new() -> None:  # the endpoint's own count, read by the gauge at scrape time
        count[0] += 1
        count[0] -= 1

    return _best(old), _best(new)


def _audit_batch_pair(lines: int = 4) -> tuple[float, float]:
    """Per line: one write(2) each, or the lines of one loop iteration in one write(2)."""
    import tempfile

    line = b"x" * 420 + b"\n"
    with tempfile.TemporaryDirectory() as scratch:
        fd = os.open(os.path.join(scratch, "audit.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:

            def each() -> None:
                for _ in range(lines):
                    os.write(fd, line)

            def batched() -> None:
                pending = [line for _ in range(lines)]
                os.write(fd, b"".join(pending))

            return _best(each, 2000) / lines, _best(batched, 2000) / lines
        finally:
            os.close(fd)


def rows() -> list[tuple[str, float, float]]:
    """(change, µs before, µs after) for each change timed alone."""
    plaintext = pybase64.b64encode_as_string(os.urandom(4096))
    document = {
        "requestMetadata": {"kmsRequestId": "r", "kmsOperation": "Encrypt",
                            "awsPrincipalArn": "arn:aws:iam::1:role/x",
                            "kmsKeyArn": "arn:aws:kms:us-east-1:1:key/x"},
        "plaintext": plaintext, "encryptionAlgorithm": "AES_GCM",
        "additionalAuthenticatedData": pybase64.b64encode_as_string(os.urandom(64)),
    }  # fmt: skip
    body = json.dumps(document, separators=(",", ":")).encode()
    parsed = orjson.loads(body)
    credential = sigv4.Credential("AKIDEXAMPLE", "s" * 40)
    now = datetime.now(UTC)
    headers = sigv4.sign(method="POST", path="/p", headers={"Host": "h"}, body=body,
                         credential=credential, region="us-east-1", now=now)  # fmt: skip
    authorization = headers["Authorization"]
    key = os.urandom(32)
    clock = _UtcMilliseconds()
    rows = [
        ("duplicate JSON members (4 KiB body)", _best(lambda: _old_duplicates(body)),
         _best(lambda: model._has_duplicate_members(body, parsed))),
        ("strict Base64 decode (4 KiB)", _best(lambda: _old_base64(plaintext)),
         _best(lambda: model._base64({"p": plaintext}, "p", required=True))),
        ("Base64 encode (4 KiB)",
         _best(lambda: binascii.b2a_base64(body[:4096], newline=False).decode()),
         _best(lambda: pybase64.b64encode_as_string(body[:4096]))),
        ("request deadline, backend that does not wait", *_deadline_pair()),
        ("head timer per request (armed, cancelled)", *_head_timer_pair()),
        ("SigV4 Authorization parse", _best(
            lambda: sigv4._parse_authorization_strictly(authorization)),
         _best(lambda: sigv4._parse_authorization(authorization))),
        ("HMAC-SHA256 of the string to sign: hmac.digest (not kept)",
         _best(lambda: hmac.new(key, body[:300], hashlib.sha256).hexdigest()),
         _best(lambda: hmac.digest(key, body[:300], "sha256").hex())),
        ("audit line timestamp", _best(
            lambda: datetime.now(UTC).isoformat(timespec="milliseconds")),
         _best(lambda: clock(time.time()))),
        ("request metadata (audit record and request)", _best(lambda: _old_metadata(parsed)),
         _best(lambda: model._request_metadata(parsed, model._CRYPTO_FIELDS))),
        ("histogram observation (prometheus-client, then plain counters)", *_histogram_pair()),
        ("in-flight gauge per request (inc and dec, then the endpoint's count)",
         *_in_flight_pair()),
        ("audit line, 4 per loop iteration: a write(2) each, or one for all (not kept)",
         *_audit_batch_pair()),
    ]  # fmt: skip
    return rows


def table(measured: list[tuple[str, float, float]]) -> list[str]:
    lines = ["| change | before µs | after µs |", "|---|---|---|"]
    return lines + [f"| {name} | {before:.2f} | {after:.2f} |" for name, before, after in measured]


def main() -> None:
    print("\n".join(table(rows())))


if __name__ == "__main__":
    main()
