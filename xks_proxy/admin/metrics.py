"""``xks_admin_requests_total{operation, outcome}``: every guarded admin API request, counted.

``operation`` is one of the fixed operation names of ``admin/roles.py`` (``keys.create``,
``policies.put``…); ``outcome`` one of:

- ``allowed``: the token was valid, its roles allowed the operation, and it succeeded (< 400);
- ``denied_401``: no token, or one that did not verify;
- ``denied_403``: a valid token whose roles do not allow the operation;
- ``refused``: allowed, but the request or the state refused it (400, 404, 409, 413);
- ``error``: allowed, but the proxy failed (5xx: a key store it cannot reach, a bug).

Both label sets are closed, so no token content, principal or key id reaches a label. The
counter lives in the registry of the process that serves the admin API: the single process's,
or the supervisor's next to its workers' metrics.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from xks_proxy.admin.roles import OPERATIONS

OUTCOMES = ("allowed", "denied_401", "denied_403", "refused", "error")


def outcome_of(status: int) -> str:
    if status == 401:
        return "denied_401"
    if status == 403:
        return "denied_403"
    if status >= 500:
        return "error"
    return "refused" if status >= 400 else "allowed"


class AdminMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "xks_admin_requests",
            "Admin API requests by operation and outcome (allowed, denied_401, denied_403, "
            "refused, error).",
            ["operation", "outcome"],
            registry=registry,
        )
        # Every series exists from the start, so a rate() or an alert on denials sees 0, not
        # "no data", until the first one.
        for operation in OPERATIONS:
            for outcome in OUTCOMES:
                self.requests.labels(operation, outcome)

    def observe(self, operation: str, status: int) -> None:
        self.requests.labels(operation, outcome_of(status)).inc()
