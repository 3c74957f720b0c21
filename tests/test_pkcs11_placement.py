"""Where the PKCS#11 backend's calls run (xks_proxy/backends/pkcs11_placement.py), through the
proxy on the session's real SoftHSM2 token: "auto" (the default) puts SoftHSM2 on the event
loop, ``fault_delay_ms`` and ``false`` keep call threads, and under "auto" one call slower than
``event_loop_call_limit_ms`` moves the backend to call threads for good; ``true`` never moves."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_pkcs11_deployment
from tests.softhsm import USER_PIN, SoftHsm
from tests.test_pkcs11 import _call_threads, _client
from tests.xks_client import HEALTH_BODY, XksClient, decrypt_body, encrypt_body, unb64
from xks_proxy.runtime import ProxyRuntime

PLACEMENT = "xks_proxy.backends.pkcs11_placement"
ON_LOOP = "backend hsm: PKCS#11 calls on the event loop"
ON_THREADS = "backend hsm: PKCS#11 calls on call threads"
# 1 µs: every real SoftHSM2 call takes longer (about 100 µs through python-pkcs11).
BELOW_ANY_CALL_MS = 0.001
FALLBACK = re.compile(
    r"backend hsm: a PKCS#11 call took \d+\.\d{3} ms on the event loop \(limit 0\.001 ms\); "
    r"its calls run on call threads from now on"
)


@pytest.fixture(autouse=True)
def _placement_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=PLACEMENT)


def _placement_lines(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == PLACEMENT and r.levelno == level]


def _on_loop_gauge(runtime: ProxyRuntime) -> float | None:
    return runtime.metrics.registry.get_sample_value(
        "xks_pkcs11_calls_on_event_loop", {"backend": "hsm"}
    )


async def _round_trips(xks: XksClient, count: int = 3) -> None:
    for index in range(count):
        plaintext = b"round trip %d" % index
        encrypted = await xks.call("encrypt", "key-both", encrypt_body(plaintext, b"ctx"))
        decrypted = await xks.call("decrypt", "key-both", decrypt_body(encrypted, b"ctx"))
        assert unb64(decrypted["plaintext"]) == plaintext
    health = await xks.call("health", None, HEALTH_BODY)
    assert health["ekmFleetDetails"][0]["healthStatus"] == "ACTIVE"


async def test_auto_runs_softhsm2_calls_on_the_event_loop(
    tmp_path: Path, softhsm: SoftHsm, aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    before = _call_threads()
    # "auto" as by default, with a limit no call reaches even on a loaded machine (a call
    # preempted for 10 ms would rightly move the backend; the fallback is tested below).
    deployment = make_pkcs11_deployment(tmp_path, softhsm, event_loop_call_limit_ms=60_000)
    assert deployment.config.backends["hsm"].calls_on_event_loop == "auto"  # type: ignore[union-attr]
    runtime, xks = await _client(deployment, aiohttp_client)
    await _round_trips(xks)
    assert _call_threads() <= before, "a call ran on a thread"
    assert _on_loop_gauge(runtime) == 1
    assert _placement_lines(caplog) == [f"{ON_LOOP} (auto: SoftHSM2)"]
    assert not _placement_lines(caplog, logging.WARNING)


@pytest.mark.parametrize(
    ("setting", "reason"),
    [
        # The setting for a module that may block (a network HSM), on SoftHSM2 too.
        ({"calls_on_event_loop": False}, "calls_on_event_loop = false"),
        # "auto" with a simulated slow HSM.
        ({"fault_delay_ms": 1}, "auto: SoftHSM2 with fault_delay_ms"),
    ],
    ids=["false", "auto-with-fault-delay"],
)
async def test_calls_stay_on_call_threads(
    tmp_path: Path,
    softhsm: SoftHsm,
    aiohttp_client: Any,
    caplog: pytest.LogCaptureFixture,
    setting: dict[str, Any],
    reason: str,
) -> None:
    before = _call_threads()
    deployment = make_pkcs11_deployment(tmp_path, softhsm, **setting)
    runtime, xks = await _client(deployment, aiohttp_client)
    await _round_trips(xks)
    assert _call_threads() - before, "no call thread was started"
    assert _on_loop_gauge(runtime) == 0
    assert _placement_lines(caplog) == [f"{ON_THREADS} ({reason})"]


async def test_auto_moves_to_call_threads_after_one_slow_call(
    tmp_path: Path, softhsm: SoftHsm, aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    before = _call_threads()
    deployment = make_pkcs11_deployment(
        tmp_path, softhsm, event_loop_call_limit_ms=BELOW_ANY_CALL_MS
    )
    runtime, xks = await _client(deployment, aiohttp_client)
    await _round_trips(xks)
    assert _call_threads() - before, "the calls never moved to threads"
    assert _on_loop_gauge(runtime) == 0
    assert _placement_lines(caplog) == [f"{ON_LOOP} (auto: SoftHSM2)"]
    (warning,) = _placement_lines(caplog, logging.WARNING)  # once, however many calls followed
    assert FALLBACK.fullmatch(warning), warning
    assert USER_PIN not in caplog.text


async def test_true_never_moves_to_call_threads(
    tmp_path: Path, softhsm: SoftHsm, aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The operator forced the calls onto the loop: the limit does not apply."""
    before = _call_threads()
    deployment = make_pkcs11_deployment(
        tmp_path, softhsm, calls_on_event_loop=True, event_loop_call_limit_ms=BELOW_ANY_CALL_MS
    )
    runtime, xks = await _client(deployment, aiohttp_client)
    await _round_trips(xks)
    assert _call_threads() <= before, "a call ran on a thread"
    assert _on_loop_gauge(runtime) == 1
    assert _placement_lines(caplog) == [f"{ON_LOOP} (calls_on_event_loop = true)"]
    assert not _placement_lines(caplog, logging.WARNING)
