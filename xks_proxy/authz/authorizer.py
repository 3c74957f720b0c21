"""Secondary authorization of XKS requests (xks-spec §6.5) by one key store's Cedar policies.

A decision is a pure function of ``AuthzInput``, and real traffic repeats the same few
principals, operations, services and keys, so decisions are kept in a bounded LRU cache
(``DECISION_CACHE_SIZE`` entries, least recently used dropped first). An ``Authorizer`` is built
with its policies and never changes; a reload builds new ones, so every policy change starts
with an empty cache.

Cedar semantics apply: with a policy file in force, a request is allowed only when some
``permit`` matches and no ``forbid`` does. Beyond Cedar, a policy that fails to evaluate for a
request (an error, e.g. comparing a string with a number) denies it: Cedar would skip such a
policy, which for a ``forbid`` means allowing what it was written to forbid. The audit line
then names the failing policy. Should cedarpy refuse a request outright, that is a deny too
(``(policy engine error)``), never a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import cedarpy

from xks_proxy.authz.policy import PolicyFile, load_policy_file
from xks_proxy.authz.request import AuthzInput, action_entities
from xks_proxy.errors import AccessDeniedError
from xks_proxy.model import RequestMetadata
from xks_proxy.safelog import log_unexpected

log = logging.getLogger(__name__)
DECISION_CACHE_SIZE = 4096
ENGINE_ERROR = "(policy engine error)"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    # The names of the policies that decided: the matching permits of an allow, the matching
    # forbids of a deny, the failing policies of a deny by error; empty for a default deny.
    policies: tuple[str, ...]
    errors: tuple[str, ...] = ()


class PolicyDeniedError(AccessDeniedError):
    """A denial; KMS sees the generic message, the audit line ``policies``."""

    def __init__(self, decision: Decision) -> None:
        super().__init__()
        self.decision = decision
        self.audit_policies = decision.policies or ("(no permit matched)",)


class Authorizer:
    """One key store's policies; ``check`` raises ``PolicyDeniedError`` on a deny."""

    def __init__(
        self,
        key_store: str,
        policies: PolicyFile | None,
        observe: Callable[[bool], None] | None = None,
    ) -> None:
        self.key_store = key_store
        # Told every decision of ``check`` (the metrics' xks_authz_decisions_total).
        self._observe = observe
        self.policies: PolicyFile | None = None
        self.replace(policies)

    def replace(self, policies: PolicyFile | None) -> None:
        """Put ``policies`` in force with an empty decision cache (a policy file is replaced by
        building a new Authorizer at reload; a policy kept in the key store changes here).

        ``check`` uses only ``decide``, which is bound to its policies and replaced in one
        assignment, so a request sees the old policies or the new ones, never a mix. None (a
        key store whose policy in the store is not written yet) allows, as no policy does.
        """
        self.policies = policies
        # Per policy set, so the cache lives and dies with these policies.
        self.decide = lru_cache(maxsize=DECISION_CACHE_SIZE)(partial(self._evaluate, policies))

    @classmethod
    def load(
        cls, key_store: str, path: Path, observe: Callable[[bool], None] | None = None
    ) -> Authorizer:
        return cls(key_store, load_policy_file(path), observe)

    def check(self, key_id: str, xks_operation: str, metadata: RequestMetadata) -> None:
        decision = self.decide(AuthzInput.of(self.key_store, key_id, xks_operation, metadata))
        if self._observe is not None:
            self._observe(decision.allowed)
        if not decision.allowed:
            raise PolicyDeniedError(decision)

    def evaluate(self, request: AuthzInput) -> Decision:
        """The uncached decision, by the policies in force."""
        return self._evaluate(self.policies, request)

    def _evaluate(self, policies: PolicyFile | None, request: AuthzInput) -> Decision:
        if policies is None:
            return Decision(allowed=True, policies=())
        try:
            result = cedarpy.is_authorized(
                request.cedar_request(),
                policies.policy_set,
                action_entities(request.kms_operation, request.xks_operation),
            )
        except Exception as error:
            # The engine refused the request itself (none is known over HTTP: the body parser
            # already refuses what cedarpy cannot encode). Fail closed, never a 500.
            log_unexpected(log, logging.ERROR, f"Cedar decision for {self.key_store}", error)
            return Decision(allowed=False, policies=(ENGINE_ERROR,), errors=(ENGINE_ERROR,))
        diagnostics = result.diagnostics
        errors = tuple(diagnostics.errors)
        reasons = tuple(policies.name_of(cedar_id) for cedar_id in diagnostics.reasons)
        if errors:
            forbids = () if result.allowed else reasons
            failing = tuple(_failing(policies, error) for error in errors)
            return Decision(allowed=False, policies=forbids + failing, errors=errors)
        return Decision(allowed=result.allowed, policies=reasons)


def _failing(policies: PolicyFile, error: str) -> str:
    # cedarpy reports "error while evaluating policy `policy3`: …".
    for cedar_id in policies.policies:
        if f"`{cedar_id}`" in error:
            return policies.name_of(cedar_id)
    return "(evaluation error)"
