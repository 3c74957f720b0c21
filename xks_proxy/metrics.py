"""Prometheus instruments in the proxy's own registry, served on a separate listener.

Labels come from closed sets only (operation names, configured key store and backend names,
the spec's errorNames), so no request content can reach a label and cardinality stays bounded.

With several worker processes, prometheus-client's multiprocess mode is on (the supervisor sets
``PROMETHEUS_MULTIPROC_DIR`` before the workers start): counters and histograms add up across
workers, and each gauge declares how its per-process values combine.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from xks_proxy import __version__
from xks_proxy.backends.base import HealthState
from xks_proxy.backends.session_pool import SessionPoolObserver
from xks_proxy.counting_histogram import labelled_histogram, multiprocess_mode

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
# Set by the supervisor for each worker (0, 1, …); absent in a single-process proxy.
WORKER_SLOT_ENV = "XKS_PROXY_WORKER_SLOT"


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
        # Observed on every request: plain counters behind a collector (counting_histogram.py).
        self.request_duration = labelled_histogram(
            "xks_request_duration_seconds",
            "Time from the arrival of the request's first byte to its response, by XKS "
            "operation, key store and outcome (success or the errorName).",
            ["operation", "key_store", "outcome"],
            LATENCY_BUCKETS,
            self.registry,
        )
        self.event_loop_lag = Histogram(
            "xks_event_loop_lag_seconds",
            "How late the event loop ran a periodic callback that was due: time every waiting "
            "request also waits (saturation).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        gc_pause = Histogram(
            "xks_gc_pause_seconds",
            "How long each garbage collection stopped the worker (its event loop), by "
            "generation (2: a full collection).",
            ["generation"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._gc_pauses = [gc_pause.labels(str(generation)) for generation in range(3)]
        self.errors = Counter(
            "xks_errors",
            "Error responses by errorName and by whether KMS retries them (xks-spec 7.3).",
            ["operation", "key_store", "error_name", "error_type"],
            registry=self.registry,
        )
        self.backend_duration = labelled_histogram(
            "xks_backend_call_duration_seconds",
            "Time spent in the key backend, by backend, call and outcome.",
            ["backend", "call", "outcome"],
            LATENCY_BUCKETS,
            self.registry,
        )
        self.in_flight = Gauge(
            "xks_requests_in_flight",
            "XKS requests being processed.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self._in_flight_source: Callable[[], int] | None = None
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
        self.authz_decisions = Counter(
            "xks_authz_decisions",
            "Secondary-authorization (Cedar) decisions of XKS requests, by key store and "
            "decision (allow or deny), cached decisions included; only for key stores with an "
            "authorization_policy.",
            ["key_store", "decision"],
            registry=self.registry,
        )
        self.config_reloads = Counter(
            "xks_config_reloads",
            "Configuration reloads, by result (applied or rejected).",
            ["result"],
            registry=self.registry,
        )

        self._lifecycle_instruments()

    def _lifecycle_instruments(self) -> None:
        """Certificate expiry, reload results and PKCS#11 session pools (issue 10)."""
        # Every worker reloads the same file on SIGHUP; worker 0 counts for all of them, so a
        # reload counts once however many workers there are.
        self.counts_reloads = os.environ.get(WORKER_SLOT_ENV, "0") == "0"
        self._tls_expiry: Gauge | None = None
        self.pool_sessions = Gauge(
            "xks_pkcs11_sessions",
            "Sessions in each PKCS#11 token's pool.",
            ["backend", "token"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.pool_in_use = Gauge(
            "xks_pkcs11_sessions_in_use",
            "PKCS#11 sessions running a call; at xks_pkcs11_sessions the HSM is saturated.",
            ["backend", "token"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.pool_waiters = Gauge(
            "xks_pkcs11_session_waiters",
            "Requests waiting for a free PKCS#11 session.",
            ["backend", "token"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.pool_wait = Histogram(
            "xks_pkcs11_session_wait_seconds",
            "Time a request waited for a free PKCS#11 session (0 when one was free).",
            ["backend", "token"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # With workers, 0 as soon as one worker's calls left the loop (each decides alone).
        self.calls_on_event_loop = Gauge(
            "xks_pkcs11_calls_on_event_loop",
            "1 while a PKCS#11 backend's calls run on the event loop, 0 on call threads "
            "(configured, chosen by auto, or moved there after a slow call).",
            ["backend"],
            registry=self.registry,
            multiprocess_mode="livemin",
        )

    def set_tls_expiry(self, not_after_seconds: float) -> None:
        """The server certificate's notAfter as a Unix time: valid at every scrape, so an alert
        ``xks_tls_certificate_expiry_timestamp_seconds - time() < 10 * 86400`` fires on time.
        Created on first use, so a proxy without TLS exports no misleading 0."""
        if self._tls_expiry is None:
            self._tls_expiry = Gauge(
                "xks_tls_certificate_expiry_timestamp_seconds",
                "Unix time at which the server certificate expires (KMS needs it valid, "
                "xks-spec 6.1).",
                registry=self.registry,
                multiprocess_mode="livemin",
            )
        self._tls_expiry.set(not_after_seconds)

    def count_in_flight(self, source: Callable[[], int]) -> None:
        """Export ``source()`` (the endpoint's own count) as ``xks_requests_in_flight``, instead
        of a locked gauge update twice per request: read at each scrape, or with workers
        (whose gauges live in files the supervisor reads) sampled at each ``tick``."""
        if multiprocess_mode():
            self._in_flight_source = source
        else:
            self.in_flight.set_function(source)

    def tick(self, loop_lag: float) -> None:
        """Called by the loop-lag monitor a few times a second."""
        self.event_loop_lag.observe(loop_lag)
        if self._in_flight_source is not None:
            self.in_flight.set(self._in_flight_source())

    def gc_pause(self, generation: int, seconds: float) -> None:
        """Called by the GC pause monitor after each collection."""
        self._gc_pauses[generation].observe(seconds)

    def count_reload(self, result: str) -> None:
        if self.counts_reloads:
            self.config_reloads.labels(result).inc()

    def authz_observer(self, key_store: str) -> Callable[[bool], None]:
        """Counts one key store's decisions; the two children are bound once, not per request."""
        allow = self.authz_decisions.labels(key_store, "allow")
        deny = self.authz_decisions.labels(key_store, "deny")

        def observe(allowed: bool) -> None:
            (allow if allowed else deny).inc()

        return observe

    def session_pool(self, backend: str) -> SessionPoolObserver:
        return _PoolMetrics(self, backend)

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


class _PoolMetrics:
    """A ``SessionPoolObserver`` writing one backend's pool into the metrics."""

    def __init__(self, metrics: ProxyMetrics, backend: str) -> None:
        self._metrics = metrics
        self._backend = backend

    def pool_size(self, token: str, sessions: int) -> None:
        self._metrics.pool_sessions.labels(self._backend, token).set(sessions)
        # Export 0 waiting / in use from the start: a dashboard or an alert comparing them with
        # the pool size sees 0, not "no data", until the first request waits.
        self._metrics.pool_waiters.labels(self._backend, token)
        self._metrics.pool_in_use.labels(self._backend, token)

    def waiting(self, token: str, change: int) -> None:
        self._metrics.pool_waiters.labels(self._backend, token).inc(change)

    def in_use(self, token: str, change: int) -> None:
        self._metrics.pool_in_use.labels(self._backend, token).inc(change)

    def waited(self, token: str, seconds: float) -> None:
        self._metrics.pool_wait.labels(self._backend, token).observe(seconds)

    def calls_on_event_loop(self, on_loop: bool) -> None:
        self._metrics.calls_on_event_loop.labels(self._backend).set(1 if on_loop else 0)
