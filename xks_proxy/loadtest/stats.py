"""Latency statistics of one load test: percentiles, the share over a budget, errors by name,
and the generator's own figures (CPU, how late it sent, its loop lag).

Latencies are kept whole (8 bytes each: a million requests take 8 MB), so percentiles are exact:
the nearest-rank definition, p = the smallest value with at least p % of samples at or below it.

The generator is *saturated* when its busiest process used ``SATURATED_CPU_SHARE`` of a core
or more, or sent its requests late (``send_lag`` p99 over ``LATE_SEND_MS``): then its own
queue is part of the latencies it reports, and more generator processes (``--processes``, on
cores the server does not use) are needed to measure the server.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# XKS spec §9.1: KMS gives up on a proxy call after 250 ms.
KMS_TIMEOUT_MS = 250.0
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
# A loop busier than this has no slack left for bursts: its queueing shows in the latencies.
SATURATED_CPU_SHARE = 0.8
# Sending 1 ms late is a fifth of the 5 ms p99 target of issue 15: the generator's own share.
LATE_SEND_MS = 1.0


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list; 0 for an empty one."""
    if not sorted_values:
        return 0.0
    # Rounded first: 99.9 / 100 * 1000 is 999.0000000000001 in floating point.
    rank = max(1, math.ceil(round(p * len(sorted_values) / 100, 9)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Results:
    """Everything one generator process measured; ``merge`` adds another process's."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    scheduled: int = 0
    elapsed_s: float = 0.0
    # How late each request left against its due time, and the generator's loop lag samples.
    send_lag_ms: list[float] = field(default_factory=list)
    loop_lag_ms: list[float] = field(default_factory=list)
    # Per generator process: CPU seconds used while sending, and the wall seconds of that.
    cpu_s: list[float] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)

    def record(self, latency_ms: float, outcome: str | None) -> None:
        self.latencies_ms.append(latency_ms)
        if outcome is not None:
            self.errors[outcome] += 1

    def add_cpu(self, cpu_seconds: float, wall_seconds: float) -> None:
        self.cpu_s.append(cpu_seconds)
        self.wall_s.append(wall_seconds)

    def merge(self, other: Results) -> None:
        self.latencies_ms.extend(other.latencies_ms)
        self.errors.update(other.errors)
        self.scheduled += other.scheduled
        self.elapsed_s = max(self.elapsed_s, other.elapsed_s)
        self.send_lag_ms.extend(other.send_lag_ms)
        self.loop_lag_ms.extend(other.loop_lag_ms)
        self.cpu_s.extend(other.cpu_s)
        self.wall_s.extend(other.wall_s)

    _WIRE_LISTS = ("latencies_ms", "send_lag_ms", "loop_lag_ms", "cpu_s", "wall_s")

    def to_wire(self) -> dict[str, Any]:
        return {
            **{name: getattr(self, name) for name in self._WIRE_LISTS},
            "errors": dict(self.errors),
            "scheduled": self.scheduled,
            "elapsed_s": self.elapsed_s,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Results:
        return cls(
            **{name: list(data.get(name, [])) for name in cls._WIRE_LISTS},
            errors=Counter(data["errors"]),
            scheduled=int(data["scheduled"]),
            elapsed_s=float(data["elapsed_s"]),
        )

    def generator(self) -> dict[str, Any]:
        """The generator's own figures: did it keep its schedule, and how busy was it?"""
        shares = [cpu / wall for cpu, wall in zip(self.cpu_s, self.wall_s, strict=True) if wall]
        busiest = max(shares, default=0.0)
        send_lag, loop_lag = sorted(self.send_lag_ms), sorted(self.loop_lag_ms)
        completed = len(self.latencies_ms)
        limits = []
        if busiest >= SATURATED_CPU_SHARE:
            limits.append(f"CPU: {busiest * 100:.0f} % of a core")
        if percentile(send_lag, 99) > LATE_SEND_MS:
            limits.append(f"sent late: p99 {percentile(send_lag, 99):.2f} ms after due")
        return {
            "processes": len(self.cpu_s),
            "cpu_utilisation": round(busiest, 3),  # the busiest process, share of one core
            "cpu_us_per_request": round(sum(self.cpu_s) / completed * 1e6, 1) if completed else 0,
            "send_lag_ms": _percentiles(send_lag),
            "loop_lag_ms": _percentiles(loop_lag),
            "saturated": bool(limits),
            "saturated_by": limits,
        }

    def summary(self) -> dict[str, Any]:
        values = sorted(self.latencies_ms)
        completed = len(values)
        errors = sum(self.errors.values())
        return {
            "scheduled": self.scheduled,
            "completed": completed,
            "elapsed_s": round(self.elapsed_s, 3),
            "achieved_rate": round(completed / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "latency_ms": _percentiles(values),
            "over_250ms_share": (
                round(sum(v > KMS_TIMEOUT_MS for v in values) / completed, 6) if completed else 0.0
            ),
            "errors": dict(sorted(self.errors.items())),
            "error_rate": round(errors / completed, 6) if completed else 0.0,
            "generator": self.generator(),
        }


def _percentiles(values: list[float]) -> dict[str, float]:
    """p50, p90, p99, p99.9 and max of an ascending list, in its unit, rounded to 3 places."""
    return {
        **{f"p{p:g}": round(percentile(values, p), 3) for p in PERCENTILES},
        "max": round(values[-1], 3) if values else 0.0,
    }
