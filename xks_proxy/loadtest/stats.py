"""Latency statistics of one load test: percentiles, the share over a budget, errors by name.

Latencies are kept whole (8 bytes each: a million requests take 8 MB), so percentiles are exact:
the nearest-rank definition, p = the smallest value with at least p % of samples at or below it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# XKS spec §9.1: KMS gives up on a proxy call after 250 ms.
KMS_TIMEOUT_MS = 250.0
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


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

    def record(self, latency_ms: float, outcome: str | None) -> None:
        self.latencies_ms.append(latency_ms)
        if outcome is not None:
            self.errors[outcome] += 1

    def merge(self, other: Results) -> None:
        self.latencies_ms.extend(other.latencies_ms)
        self.errors.update(other.errors)
        self.scheduled += other.scheduled
        self.elapsed_s = max(self.elapsed_s, other.elapsed_s)

    def to_wire(self) -> dict[str, Any]:
        return {
            "latencies_ms": self.latencies_ms,
            "errors": dict(self.errors),
            "scheduled": self.scheduled,
            "elapsed_s": self.elapsed_s,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Results:
        return cls(
            latencies_ms=list(data["latencies_ms"]),
            errors=Counter(data["errors"]),
            scheduled=int(data["scheduled"]),
            elapsed_s=float(data["elapsed_s"]),
        )

    def summary(self) -> dict[str, Any]:
        values = sorted(self.latencies_ms)
        completed = len(values)
        errors = sum(self.errors.values())
        return {
            "scheduled": self.scheduled,
            "completed": completed,
            "elapsed_s": round(self.elapsed_s, 3),
            "achieved_rate": round(completed / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "latency_ms": {
                **{f"p{p:g}": round(percentile(values, p), 3) for p in PERCENTILES},
                "max": round(values[-1], 3) if values else 0.0,
            },
            "over_250ms_share": (
                round(sum(v > KMS_TIMEOUT_MS for v in values) / completed, 6) if completed else 0.0
            ),
            "errors": dict(sorted(self.errors.items())),
            "error_rate": round(errors / completed, 6) if completed else 0.0,
        }
