"""Where a PKCS#11 backend's calls run: on the event loop thread or on call threads.

``calls_on_event_loop`` in ``[backends.NAME]``:

* ``false``: every call runs on a call thread (``call_threads``). A network HSM may take long to
  answer, and the request deadline must still answer 503 meanwhile.
* ``true``: every call runs on the event loop thread, always; the operator decided, so the
  backend never moves.
* ``"auto"`` (the default): on the event loop only for a module known to answer in process in
  microseconds, recognised by its own identity (``C_GetInfo``, python-pkcs11's ``lib``): SoftHSM2,
  which reports manufacturer ``SoftHSM`` and library version 2.x (2.6.1: "SoftHSM",
  "Implementation of PKCS11", 2.6), and only while ``fault_delay_ms`` is 0 (a simulated slow
  HSM belongs on threads). Every other module runs on call threads. On SoftHSM2 the hop to a
  thread and back costs more than the token's own work (docs/benchmarks.md: Decrypt at 0.38 of the
  software backend on threads, 0.61 on the loop).

The fallback. Under "auto" each call on the loop (requests, health checks, reinitialising the
module) is timed (two ``perf_counter`` readings); the first that takes longer than
``event_loop_call_limit_ms`` moves the backend to call threads until the process restarts, with
one WARNING line and ``xks_pkcs11_calls_on_event_loop`` going to 0. The default, 10 ms, is far
above what SoftHSM2 takes: measured here, a 4 KiB AES-GCM call through python-pkcs11 0.13 ms
(median; 0.35 ms p99), the first call after the token changed (a key made in another session:
SoftHSM2 rereads its object files) 0.4 ms on a token of a dozen keys; that reread grows with the
number of objects on the token.

What remains: SoftHSM2 takes fcntl locks on its token files, so another process holding them
(``softhsm2-util``, ``xks-proxy pkcs11`` on the same token) stalls the event loop once, for as
long as it holds them, before the slow call moves the backend; and a moment of CPU starvation on
a loaded host can move it too. From then on every call pays the thread hop; no answer changes.

Start-up (loading the module, logging in) runs on a helper thread under "auto", since the
module's identity is known only once it is loaded; with ``true`` it runs on the loop, with
``false`` on a call thread.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

from xks_proxy.config import Pkcs11BackendConfig

log = logging.getLogger(__name__)
T = TypeVar("T")


def known_in_process_module(library: Any) -> str | None:
    """The name of a module known to answer in process in microseconds, or None."""
    if library.manufacturer_id.strip() == "SoftHSM" and library.library_version[0] == 2:
        return "SoftHSM2"
    return None


class CallPlacement:
    """Whether one backend's calls run on the event loop now; a slow call under "auto" moves
    them to call threads. ``report`` is told each choice (the metric)."""

    def __init__(self, config: Pkcs11BackendConfig, report: Callable[[bool], None]) -> None:
        self._config = config
        self._report = report
        self.on_loop = config.calls_on_event_loop is True
        # Only "auto" falls back; with true the operator has decided.
        auto = config.calls_on_event_loop == "auto"
        self._limit = config.event_loop_call_limit_ms / 1000 if auto else math.inf

    def choose(self, library: Any) -> None:
        """Once the module is loaded: decide "auto", and say where the calls run."""
        setting = self._config.calls_on_event_loop
        if setting == "auto":
            known = known_in_process_module(library)
            self.on_loop = known is not None and not self._config.fault_delay_ms
            if known is None:
                reason = f"auto: {library.manufacturer_id.strip() or 'unnamed module'}"
            elif self._config.fault_delay_ms:
                reason = f"auto: {known} with fault_delay_ms"
            else:
                reason = f"auto: {known}"
        else:
            reason = f"calls_on_event_loop = {str(setting).lower()}"
        where = "the event loop" if self.on_loop else "call threads"
        log.info("backend %s: PKCS#11 calls on %s (%s)", self._config.name, where, reason)
        self._report(self.on_loop)

    def run(self, call: Callable[[], T]) -> T:
        """``call()`` here, on the event loop thread, timed."""
        started = time.perf_counter()
        try:
            return call()
        finally:
            took = time.perf_counter() - started
            if took > self._limit:
                self._fall_back(took)

    def _fall_back(self, took: float) -> None:
        self.on_loop = False
        self._limit = math.inf  # once
        log.warning(
            "backend %s: a PKCS#11 call took %.3f ms on the event loop (limit %s ms); "
            "its calls run on call threads from now on",
            self._config.name, took * 1000, self._config.event_loop_call_limit_ms,
        )  # fmt: skip
        self._report(False)
