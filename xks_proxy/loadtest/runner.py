"""The open-loop engine: requests leave on a fixed schedule, whatever the server does.

Request i is due at ``start + i / rate``. Its latency is measured from that *scheduled* time,
not from when it actually left, so a server that stalls cannot hide the queue it causes behind
it (coordinated omission): every request that should have gone out during a stall carries the
stall in its latency. Requests beyond the connection limit wait in the client's queue, and that
wait counts too. Several processes can share one rate when one core cannot generate it: each
takes every N-th slot of the same schedule, from a common wall-clock start.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from typing import Any

import aiohttp

from xks_proxy.loadtest.stats import Results, percentile
from xks_proxy.loadtest.workload import (
    KmsTarget,
    KmsWorkload,
    XksTarget,
    XksWorkload,
    schedule,
)


@dataclass(frozen=True)
class LoadSpec:
    target: XksTarget | KmsTarget
    mix: list[tuple[str, int]]
    rate: float
    duration: float
    connections: int = 32
    plaintext_bytes: int = 4096
    aad_bytes: int = 64
    timeout: float = 10.0
    cacert: str | None = None
    insecure: bool = False
    client_cert: tuple[str, str] | None = None
    processes: int = 1
    # Which slots of the shared schedule this process sends: index, index + step, ...
    slot_index: int = 0
    slot_step: int = 1
    start_at: float | None = None  # wall-clock time of slot 0
    progress: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def ssl_context(spec: LoadSpec) -> ssl.SSLContext | bool:
    if not spec.target.url.startswith("https://"):
        return False
    context = ssl.create_default_context(cafile=spec.cacert)
    if spec.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if spec.client_cert:
        context.load_cert_chain(*spec.client_cert)
    return context


async def _error_name(response: aiohttp.ClientResponse, body: bytes) -> str:
    """The XKS errorName, or the KMS ``__type``, or the HTTP status."""
    try:
        document = json.loads(body)
        return str(document.get("errorName") or document["__type"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"HTTP {response.status}"


def workload_for(spec: LoadSpec) -> XksWorkload | KmsWorkload:
    if isinstance(spec.target, KmsTarget):
        return KmsWorkload(spec.target, spec.plaintext_bytes)
    return XksWorkload(spec.target, spec.plaintext_bytes, spec.aad_bytes)


class _Progress:
    def __init__(self, results: Results, total: int) -> None:
        self._results = results
        self._total = total
        self._interactive = sys.stderr.isatty()

    async def run(self, started: float) -> None:
        seen = 0
        while True:
            await asyncio.sleep(1.0 if self._interactive else 5.0)
            latencies = self._results.latencies_ms
            window = sorted(latencies[seen:])
            seen = len(latencies)
            errors = sum(self._results.errors.values())
            line = (
                f"t={time.monotonic() - started:5.1f}s done={len(latencies)}/{self._total} "
                f"last: {len(window)} req, p99={percentile(window, 99):.2f} ms, errors={errors}"
            )
            print(("\r" + line) if self._interactive else line, end="", file=sys.stderr,
                  flush=True)  # fmt: skip
            if not self._interactive:
                print(file=sys.stderr)


async def run_process(spec: LoadSpec) -> Results:
    """This process's share of the schedule."""
    workload = workload_for(spec)
    cycle = schedule(spec.mix)
    results = Results()
    connector = aiohttp.TCPConnector(limit=spec.connections, ssl=ssl_context(spec))
    timeout = aiohttp.ClientTimeout(total=spec.timeout)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if "decrypt" in cycle:
            url, body, headers = workload.request("encrypt")
            async with session.post(url, data=body, headers=headers) as response:
                if response.status != 200:
                    raise RuntimeError(f"the set-up Encrypt failed: HTTP {response.status} "
                                       f"{(await response.read())[:200]!r}")  # fmt: skip
                workload.set_ciphertext(json.loads(await response.read()))

        async def one(operation: str, due: float) -> None:
            url, body, headers = workload.request(operation)
            outcome: str | None = None
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    payload = await response.read()
                    if response.status != 200:
                        outcome = await _error_name(response, payload)
            except (aiohttp.ClientError, TimeoutError, OSError) as error:
                outcome = type(error).__name__
            results.record((loop.time() - due) * 1000, outcome)

        total = int(spec.rate * spec.duration)
        wall_start = spec.start_at if spec.start_at is not None else time.time() + 0.1
        start = loop.time() + (wall_start - time.time())
        progress_task = None
        if spec.progress:
            progress_task = asyncio.create_task(_Progress(results, total).run(time.monotonic()))
        pending: set[asyncio.Task[None]] = set()
        mine = range(spec.slot_index, total, spec.slot_step)
        results.scheduled = len(mine)
        for slot in mine:
            due = start + slot / spec.rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(cycle[slot % len(cycle)], due))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
        results.elapsed_s = loop.time() - start
        if progress_task is not None:
            progress_task.cancel()
            print(file=sys.stderr)
    return results


def _child(spec: LoadSpec) -> dict[str, Any]:
    return asyncio.run(run_process(spec)).to_wire()


def run(spec: LoadSpec) -> Results:
    """Run the whole load test, in one process or several."""
    if spec.processes <= 1:
        return asyncio.run(run_process(spec))
    start_at = time.time() + 1.5  # time for the children to start
    specs = [
        replace(spec, slot_index=i, slot_step=spec.processes, start_at=start_at,
                progress=spec.progress and i == 0)
        for i in range(spec.processes)
    ]  # fmt: skip
    merged = Results()
    with ProcessPoolExecutor(spec.processes, mp_context=get_context("spawn")) as pool:
        for wire in pool.map(_child, specs):
            merged.merge(Results.from_wire(wire))
    return merged
