"""Prometheus instruments in the proxy's own registry, served on a separate listener.

Labels come from closed sets only (operation names, configured key store and backend names,
the spec's errorNames), so no request content can reach a label and cardinality stays bounded.

With several worker processes, prometheus-client's multiprocess mode is on (the supervisor sets
``PROMETHEUS_MULTIPROC_DIR`` before the workers start): counters and histograms add up across
workers, and each gauge declares how its per-process values combine.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from xks_proxy import __version__
from xks_proxy.backends.base import HealthState

# Resolve the 1-250 ms band KMS cares about (xks-spec §9.1), plus the tail beyond it.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
)
SUCCESS = "success"


class ProxyMetrics:
    """Every instrument the proxy exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._request_children: dict[tuple[str, str, str], Any] = {}
        self._backend_children: dict[tuple[str, str, str], Any] = {}
        Gauge(
            "xks_proxy_build_info",
            "Always 1; the version is a label.",
            ["version"],
            registry=self.registry,
            multiprocess_mode="livemax",
        ).labels(__version__).set(1)
        self.request_duration = Histogram(
            "xks_request_duration_seconds",
            "Time from the arrival of the request's first byte to its response, by XKS "
            "operation, key store and outcome (success or the errorName).",
            ["operation", "key_store", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.event_loop_lag = Histogram(
            "xks_event_loop_lag_seconds",
            "How late the event loop ran a periodic callback that was due: time every waiting "
            "request also waits (saturation).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "xks_errors",
            "Error responses by errorName and by whether KMS retries them (xks-spec 7.3).",
            ["operation", "key_store", "error_name", "error_type"],
            registry=self.registry,
        )
        self.backend_duration = Histogram(
            "xks_backend_call_duration_seconds",
            "Time spent in the key backend, by backend, call and outcome.",
            ["backend", "call", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "xks_requests_in_flight",
            "XKS requests being processed.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.ekm_health = Gauge(
            "xks_ekm_health_state",
            "1 for the state each external key manager was last found in, 0 for the others.",
            ["backend", "ekm_id", "state"],
            registry=self.registry,
            multiprocess_mode="livemostrecent",
        )
        self.health_check_time = Gauge(
            "xks_health_check_timestamp_seconds",
            "Unix time of the last completed deep health check, by backend.",
            ["backend"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.tls_expiry_days = Gauge(
            "xks_tls_certificate_expiry_days",
            "Days until the server certificate expires (KMS needs it valid, xks-spec 6.1).",
            registry=self.registry,
            multiprocess_mode="livemin",
        )
        self.tls_handshake_failures = Counter(
            "xks_tls_handshake_failures",
            "TLS handshakes that failed or presented a client certificate not allowed.",
            registry=self.registry,
        )
        self.audit_write_failures = Counter(
            "xks_audit_write_failures",
            "Audit lines that could not be written (full or failing audit volume).",
            registry=self.registry,
        )
        self.http_protocol_errors = Counter(
            "xks_http_protocol_errors",
            "Requests refused because they were not well-formed HTTP/1.1 (bad framing, request "
            "line or header).",
            registry=self.registry,
        )
        self.config_reloads = Counter(
            "xks_config_reloads",
            "Configuration reloads, by result (applied or rejected).",
            ["result"],
            registry=self.registry,
        )

    def observe_request(
        self, operation: str, key_store: str, outcome: str, retryable: bool, seconds: float
    ) -> None:
        # Label lookups cost more than the observation; the label sets are few and fixed.
        key = (operation, key_store, outcome)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.request_duration.labels(*key)
        child.observe(seconds)
        if outcome != SUCCESS:
            kind = "retryable" if retryable else "non_retryable"
            self.errors.labels(operation, key_store, outcome, kind).inc()

    def observe_backend(self, backend: str, call: str, outcome: str, seconds: float) -> None:
        key = (backend, call, outcome)
        child = self._backend_children.get(key)
        if child is None:
            child = self._backend_children[key] = self.backend_duration.labels(*key)
        child.observe(seconds)

    def set_ekm_state(self, backend: str, ekm_id: str, state: HealthState) -> None:
        for candidate in HealthState:
            self.ekm_health.labels(backend, ekm_id, candidate.value).set(
                1 if candidate is state else 0
            )
