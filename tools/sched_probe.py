"""How late the machine itself wakes a process on a core: the floor under any latency measured
there.

A process that does nothing but sleep 1 ms at a time, pinned where the proxy runs, is woken late
by whatever else the core does: other processes, the kernel, and on a virtual machine the
hypervisor running other guests (the "steal" time of /proc/stat). ``make bench`` runs it on the
proxy's core before the open-loop runs, so their tails can be read against the machine's own.

``python -m tools.sched_probe SECONDS`` prints JSON: wake-up lateness percentiles in ms, and the
share of the core's time stolen meanwhile.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

SLEEP_SECONDS = 0.001


def core_times(core: int) -> tuple[int, int]:
    """(steal, total) clock ticks of one core so far (/proc/stat)."""
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name == f"cpu{core}":
            ticks = [int(value) for value in fields]
            return ticks[7], sum(ticks[:8])  # user … steal; guest time is inside user
    raise LookupError(f"no cpu{core} in /proc/stat")


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total else 0.0


def probe(seconds: float) -> dict[str, float]:
    core = min(os.sched_getaffinity(0))
    lateness: list[float] = []
    times = core_times(core)
    end = time.perf_counter() + seconds
    while (started := time.perf_counter()) < end:
        time.sleep(SLEEP_SECONDS)
        lateness.append(time.perf_counter() - started - SLEEP_SECONDS)
    lateness.sort()

    def at(share: float) -> float:
        return round(lateness[min(len(lateness) - 1, int(share * len(lateness)))] * 1000, 3)

    return {
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
        "p99.9_ms": at(0.999),
        "max_ms": round(lateness[-1] * 1000, 3),
        "steal_share": round(steal_share(times, core_times(core)), 4),
    }


if __name__ == "__main__":
    print(json.dumps(probe(float(sys.argv[1]))))
