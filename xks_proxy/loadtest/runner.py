"""The open-loop engine: requests leave on a fixed schedule, whatever the server does.

Request i is due at ``start + i / rate``. Its latency is measured from that *scheduled* time,
not from when it actually left, so a server that stalls cannot hide the queue it causes behind
it (coordinated omission): every request that should have gone out during a stall carries the
stall in its latency. Requests beyond the connection limit wait in the client's queue, and that
wait counts too. Several processes can share one rate when one core cannot generate it: each
takes every N-th slot of the same schedule, from a common wall-clock start. Connections are
opened before the first slot (``HttpClient.warm_up``; ``warm_up=False`` opens them as requests
need them, which measures the target's handshake storm at start rather than its steady state).

The generator watches itself, so that its own stall is not read as the server's: the CPU it
used (a share of one core), how late each request left against its due time (``send_lag``),
and its own event-loop lag. Each operation's request is signed once a second (the resolution
of X-Amz-Date) and its bytes replayed within that second (a proxy accepts a signature for five
minutes, xks-spec §6.2), and the client is a lean keep-alive one (``client``), so a request
costs the generator a small fraction of what it costs the server.
"""

from __future__ import annotations

import asyncio
import gc
import json
import ssl
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from typing import Any
from urllib.parse import urlsplit

from xks_proxy.loadtest.client import ClientError, HttpClient, request_bytes
from xks_proxy.loadtest.precise_loop import new_event_loop
from xks_proxy.loadtest.stats import Results, percentile
from xks_proxy.loadtest.workload import (
    KmsTarget,
    KmsWorkload,
    XksTarget,
    XksWorkload,
    schedule,
)
from xks_proxy.loop_lag import LoopLagMonitor

# How often the generator samples its own event-loop lag (a timer: cheap at this rate).
LOOP_LAG_INTERVAL_SECONDS = 0.01


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
    # Open every connection before the first request (``HttpClient.warm_up``): the schedule
    # then measures the target in its steady state, not one TLS handshake per connection at once.
    warm_up: bool = True
    # Which slots of the shared schedule this process sends: index, index + step, ...
    slot_index: int = 0
    slot_step: int = 1
    start_at: float | None = None  # wall-clock time of slot 0
    progress: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def ssl_context(spec: LoadSpec) -> ssl.SSLContext | None:
    if not spec.target.url.startswith("https://"):
        return None
    context = ssl.create_default_context(cafile=spec.cacert)
    if spec.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if spec.client_cert:
        context.load_cert_chain(*spec.client_cert)
    return context


def _error_name(status: int, body: bytes) -> str:
    """The XKS errorName, or the KMS ``__type``, or the HTTP status."""
    try:
        document = json.loads(body)
        return str(document.get("errorName") or document["__type"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"HTTP {status}"


def workload_for(spec: LoadSpec) -> XksWorkload | KmsWorkload:
    if isinstance(spec.target, KmsTarget):
        return KmsWorkload(spec.target, spec.plaintext_bytes)
    return XksWorkload(spec.target, spec.plaintext_bytes, spec.aad_bytes)


class PreparedRequests:
    """Each operation's request as bytes, built again only when the workload signs it again."""

    def __init__(self, workload: XksWorkload | KmsWorkload) -> None:
        self._workload = workload
        self._built: dict[str, tuple[dict[str, str], bytes]] = {}

    def get(self, operation: str) -> bytes:
        url, body, headers = self._workload.request(operation)
        built = self._built.get(operation)
        if built is None or built[0] is not headers:  # the signature cache made new headers
            built = (headers, request_bytes(urlsplit(url).path, headers, body))
            self._built[operation] = built
        return built[1]


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


async def _set_up_decrypt(client: HttpClient, spec: LoadSpec,
                          workload: XksWorkload | KmsWorkload) -> None:  # fmt: skip
    """Decrypt requests replay one real ciphertext, made by an Encrypt of the target's."""
    url, body, headers = workload.request("encrypt")
    status, answer = await asyncio.wait_for(
        client.post(request_bytes(urlsplit(url).path, headers, body)), spec.timeout
    )
    if status != 200:
        raise RuntimeError(f"the set-up Encrypt failed: HTTP {status} {answer[:200]!r}")
    workload.set_ciphertext(json.loads(answer))


async def run_process(spec: LoadSpec) -> Results:
    """This process's share of the schedule."""
    workload = workload_for(spec)
    cycle = schedule(spec.mix)
    results = Results()
    loop = asyncio.get_running_loop()
    client = HttpClient(spec.target.url, ssl_context(spec), spec.connections)
    try:
        if "decrypt" in cycle:
            await _set_up_decrypt(client, spec, workload)
        prepared = PreparedRequests(workload)
        if spec.warm_up:
            await client.warm_up(spec.connections)
        record, send_lag = results.record, results.send_lag_ms.append

        async def one(operation: str, due: float) -> None:
            send_lag((loop.time() - due) * 1000)
            outcome: str | None = None
            try:
                async with asyncio.timeout(spec.timeout):
                    status, payload = await client.post(prepared.get(operation))
                if status != 200:
                    outcome = _error_name(status, payload)
            except (ClientError, TimeoutError, OSError) as error:
                outcome = type(error).__name__
            record((loop.time() - due) * 1000, outcome)

        total = int(spec.rate * spec.duration)
        wall_start = spec.start_at if spec.start_at is not None else time.time() + 0.1
        start = loop.time() + (wall_start - time.time())
        progress_task = None
        if spec.progress:
            progress_task = asyncio.create_task(_Progress(results, total).run(time.monotonic()))
        lag = LoopLagMonitor(lambda seconds: results.loop_lag_ms.append(seconds * 1000),
                             LOOP_LAG_INTERVAL_SECONDS)  # fmt: skip
        pending: set[asyncio.Task[None]] = set()
        mine = range(spec.slot_index, total, spec.slot_step)
        results.scheduled = len(mine)
        rate, create_task = spec.rate, loop.create_task
        await asyncio.sleep(max(0.0, start - loop.time()))
        cpu_start, lag_start = time.process_time(), loop.time()
        lag.start()
        for slot in mine:
            due = start + slot / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = create_task(one(cycle[slot % len(cycle)], due))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
        lag.stop()
        results.elapsed_s = loop.time() - start
        results.add_cpu(time.process_time() - cpu_start, loop.time() - lag_start)
        if progress_task is not None:
            progress_task.cancel()
            print(file=sys.stderr)
    finally:
        await client.close()
    return results


def freeze_start_up_objects() -> None:
    """Keep what start-up allocated (modules, the TLS context) out of the collector's way: a
    full collection over it took a generator's loop 100 ms and more, mid-schedule. For a
    process that only generates load (the command, its children)."""
    gc.freeze()


def generate(spec: LoadSpec) -> Results:
    """One generator process's share of the run, on the loop that sends on time
    (``precise_loop``)."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(run_process(spec))


def _child(spec: LoadSpec) -> dict[str, Any]:
    freeze_start_up_objects()
    return generate(spec).to_wire()


def run(spec: LoadSpec) -> Results:
    """Run the whole load test, in one process or several."""
    if spec.processes <= 1:
        return generate(spec)
    # Time for the children to start and open their connections (a process with 64 TLS
    # connections to open takes about half a second); one that is late shows it in its send lag.
    start_at = time.time() + 3.0
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
