"""Per-request histograms kept as plain Python numbers, exported by a collector (issue 15).

prometheus-client's ``Histogram.observe`` takes a lock twice (the sum, then the bucket) and
walks the bucket bounds in Python: about 2 to 3 µs, three times per Encrypt. The event loop is one
thread, so the locks protect nothing here; ``CountingHistogram`` keeps a list of bucket counts
and a sum per label set (a bisect and two additions, well under a microsecond) and builds the
same exposition at scrape time: same name, help, label names and buckets, so the alert rules,
the Grafana panels and promtool see no difference. Histograms only: no ``_created`` series (no
rule or panel reads them).

With several workers, prometheus-client's multiprocess mode keeps every value in a file the
supervisor adds up; a collector living in a worker would never be scraped, so there
``labelled_histogram`` returns prometheus-client's own ``Histogram`` (the per-observation cost
stays, the exported series are the same).
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.metrics_core import HistogramMetricFamily, Metric

# The variables prometheus-client reads at import to switch to its multiprocess values.
MULTIPROCESS_ENV = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")


class Observer(Protocol):
    def observe(self, amount: float) -> None: ...


class LabelledHistogram(Protocol):
    def labels(self, *values: str) -> Observer: ...


def multiprocess_mode() -> bool:
    return any(os.environ.get(name) for name in MULTIPROCESS_ENV)


def _bound_text(bound: float) -> str:
    """An ``le`` label as prometheus-client writes it: ``0.005``, ``1.0``, ``+Inf``."""
    return "+Inf" if bound == float("inf") else repr(bound)


class _Counts:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # The first bucket whose upper bound is >= amount, as prometheus-client counts.
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.sum += amount


class CountingHistogram:
    """A labelled histogram in plain numbers, registered as a collector in ``registry``."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._bounds = (*sorted(float(b) for b in buckets if b != float("inf")), float("inf"))
        self._children: dict[tuple[str, ...], _Counts] = {}
        registry.register(self)

    def labels(self, *values: str) -> _Counts:
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} takes labels {self._labelnames}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = _Counts(self._bounds)
        return child

    def describe(self) -> Iterator[Metric]:
        # Lets the registry refuse a second collector of the same name, as for a Histogram.
        yield HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, child in list(self._children.items()):
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip(self._bounds, list(child.counts), strict=True):
                cumulative += count
                buckets.append((_bound_text(bound), cumulative))
            family.add_metric(list(values), buckets, child.sum)
        yield family


def labelled_histogram(
    name: str,
    documentation: str,
    labelnames: Sequence[str],
    buckets: Sequence[float],
    registry: CollectorRegistry,
) -> LabelledHistogram:
    """A ``CountingHistogram``, or prometheus-client's ``Histogram`` in multiprocess mode."""
    if multiprocess_mode():
        return Histogram(name, documentation, labelnames, buckets=buckets, registry=registry)
    return CountingHistogram(name, documentation, labelnames, buckets, registry)
