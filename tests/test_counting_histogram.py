"""The plain-counter histogram exports exactly what prometheus-client's Histogram would, and the
in-flight gauge follows the endpoint's count (issue 15: cheaper per-request metrics, same series
for the alert rules and dashboards)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from xks_proxy.counting_histogram import (
    MULTIPROCESS_ENV,
    CountingHistogram,
    labelled_histogram,
)
from xks_proxy.metrics import LATENCY_BUCKETS, ProxyMetrics

LABELS = ("operation", "key_store", "outcome")
# On a bound, between bounds, below the first, past the last, and zero.
OBSERVATIONS = [
    (("Encrypt", "dev", "success"), 0.001),
    (("Encrypt", "dev", "success"), 0.0012),
    (("Encrypt", "dev", "success"), 0.0001),
    (("Encrypt", "dev", "success"), 7.5),
    (("Decrypt", "dev", "ValidationException"), 0.0),
    (("Decrypt", "dev", "ValidationException"), 0.25),
]


def _exposition(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return sorted(line for line in text.splitlines() if "_created" not in line)


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in MULTIPROCESS_ENV:
        monkeypatch.delenv(name, raising=False)


def test_the_exposition_is_prometheus_clients_own() -> None:
    reference, counting = CollectorRegistry(), CollectorRegistry()
    expected = Histogram("h_seconds", "help", LABELS, buckets=LATENCY_BUCKETS, registry=reference)
    actual = CountingHistogram("h_seconds", "help", LABELS, LATENCY_BUCKETS, counting)
    for labels, seconds in OBSERVATIONS:
        expected.labels(*labels).observe(seconds)
        actual.labels(*labels).observe(seconds)
    assert _exposition(counting) == _exposition(reference)
    assert any('le="+Inf"' in line and " 4.0" in line for line in _exposition(counting))


def test_a_second_histogram_of_the_same_name_is_refused() -> None:
    registry = CollectorRegistry()
    CountingHistogram("h_seconds", "help", LABELS, LATENCY_BUCKETS, registry)
    with pytest.raises(ValueError, match="Duplicated"):
        Histogram("h_seconds", "help", LABELS, registry=registry)


def test_wrong_label_count_is_refused() -> None:
    histogram = CountingHistogram("h_seconds", "help", LABELS, LATENCY_BUCKETS, CollectorRegistry())
    with pytest.raises(ValueError, match="takes labels"):
        histogram.labels("Encrypt")


def test_multiprocess_mode_keeps_prometheus_clients_histogram(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(MULTIPROCESS_ENV[0], "/nonexistent")
    made = labelled_histogram("h_seconds", "help", LABELS, LATENCY_BUCKETS, CollectorRegistry())
    assert isinstance(made, Histogram)


def test_in_flight_is_read_from_the_source_at_scrape() -> None:
    metrics = ProxyMetrics()
    count = [0]
    metrics.count_in_flight(lambda: count[0])
    count[0] = 3
    assert metrics.registry.get_sample_value("xks_requests_in_flight") == 3
    count[0] = 0
    assert metrics.registry.get_sample_value("xks_requests_in_flight") == 0


def test_with_workers_in_flight_is_sampled_at_each_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = ProxyMetrics()  # values in memory: only count_in_flight reads the mode here
    monkeypatch.setenv(MULTIPROCESS_ENV[0], "/nonexistent")
    count = [2]
    metrics.count_in_flight(lambda: count[0])
    assert metrics.registry.get_sample_value("xks_requests_in_flight") == 0
    metrics.tick(0.001)
    assert metrics.registry.get_sample_value("xks_requests_in_flight") == 2
    assert metrics.registry.get_sample_value("xks_event_loop_lag_seconds_count") == 1
