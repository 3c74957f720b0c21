"""What a key store's policies decide for one request, and which policies decided: the code
behind ``xks-proxy policy test --request FILE`` and the admin API's ``POST …/policy/explain``.

A request document is a JSON object naming the XKS operation, the key and the request
metadata: either an audit log line as it is (``xksOperation``, ``keyId``, ``kmsOperation``,
``awsPrincipalArn``, ``kmsKeyArn``, ``kmsViaService``, ``awsSourceVpc``, ``awsSourceVpce``), so
a denied request can be replayed against an edited policy, or ``xksOperation`` and ``keyId``
next to a ``requestMetadata`` object as KMS sends it. A ``keyStore`` field is ignored: the
caller names the key store. The decision is ``Authorizer.evaluate``'s, uncached, so it is what
the proxy decides with the same policies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xks_proxy.authz.authorizer import Authorizer
from xks_proxy.authz.request import AuthzInput
from xks_proxy.errors import ConfigError
from xks_proxy.model import RequestMetadata, audit_metadata

HEALTH = "GetHealthStatus"
XKS_OPERATIONS = ("GetKeyMetadata", "Encrypt", "Decrypt", HEALTH)
NEVER_CHECKED = "GetHealthStatus is never subject to authorization (xks-spec §6.5)"
NO_POLICY = "the key store has no authorization_policy"


@dataclass(frozen=True, slots=True)
class ExplainRequest:
    xks_operation: str
    key_id: str
    metadata: RequestMetadata


@dataclass(frozen=True, slots=True)
class DecidingPolicy:
    name: str
    line: int | None
    text: str | None


@dataclass(frozen=True, slots=True)
class Explanation:
    allowed: bool
    # Why no policy was consulted (health, no policy file); None when the policies decided.
    reason: str | None
    policies: tuple[DecidingPolicy, ...] = ()
    errors: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "decision": "ALLOW" if self.allowed else "DENY",
            "reason": self.reason,
            "determiningPolicies": [
                {"id": p.name, "line": p.line, "text": p.text} for p in self.policies
            ],
            "errors": list(self.errors),
        }


def request_from_document(document: object, where: str) -> ExplainRequest:
    """``ConfigError`` (prefixed with ``where``) for a document that names no usable request."""
    if not isinstance(document, dict):
        raise ConfigError(f"{where}: must be a JSON object")
    operation = document.get("xksOperation")
    if operation not in XKS_OPERATIONS:
        raise ConfigError(f"{where}: xksOperation must be one of {', '.join(XKS_OPERATIONS)}")
    nested = isinstance(document.get("requestMetadata"), dict)
    metadata = audit_metadata(document if nested else {"requestMetadata": document})
    if metadata is None:
        raise ConfigError(f"{where}: requestMetadata must be a JSON object")
    key_id = document.get("keyId")
    if operation != HEALTH:
        if not isinstance(key_id, str) or not key_id:
            raise ConfigError(f"{where}: keyId (the external key id) is required")
        if not metadata.kms_operation or metadata.aws_principal_arn is None:
            raise ConfigError(f"{where}: kmsOperation and awsPrincipalArn are required")
    return ExplainRequest(operation, key_id if isinstance(key_id, str) else "", metadata)


def explain(key_store: str, authorizer: Authorizer | None, request: ExplainRequest) -> Explanation:
    if request.xks_operation == HEALTH:
        return Explanation(allowed=True, reason=NEVER_CHECKED)
    if authorizer is None or authorizer.policies is None:
        return Explanation(allowed=True, reason=NO_POLICY)
    decision = authorizer.evaluate(
        AuthzInput.of(key_store, request.key_id, request.xks_operation, request.metadata)
    )
    policies = authorizer.policies  # the ones evaluate used: one event-loop turn, no await
    by_name = {policy.name: policy for policy in policies.policies.values()}
    deciding = []
    for name in decision.policies:
        policy = by_name.get(name)
        deciding.append(
            DecidingPolicy(name, policy.line, policy.text)
            if policy is not None
            else DecidingPolicy(name, None, None)
        )
    return Explanation(decision.allowed, None, tuple(deciding), decision.errors)
