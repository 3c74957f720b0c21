"""The Cedar entity model of an XKS request (documented in the README, "Secondary authorization").

- principal: ``Aws::Principal::"<awsPrincipalArn>"``;
- action: ``Kms::Action::"<kmsOperation>"``, a member of ``Xks::Action::"<XKS operation>"``
  (``Encrypt``, ``Decrypt``, ``GetKeyMetadata``), so a policy names either the KMS operation
  (``action == Kms::Action::"GenerateDataKey"``) or every KMS operation behind one XKS operation
  (``action in Xks::Action::"Decrypt"``). A kmsOperation this proxy has never heard of is just
  another action id (xks-spec §3.2: it must not be refused for being unknown); ReEncrypt calls
  Decrypt and then Encrypt, each checked as its own request;
- resource: ``Xks::Key::"<externalKeyId>"``;
- context: the request metadata under the spec's own field names (§3.1) ``awsPrincipalArn``,
  ``kmsKeyArn``, ``kmsOperation``, ``xksOperation``, ``kmsViaService``, ``awsSourceVpc``,
  ``awsSourceVpce``, and ``keyStore`` (the key store's name).

Every context field is always present, the empty string when KMS did not send it: a policy that
compares ``context.kmsViaService`` then never fails with a missing attribute (which in Cedar
would silently skip a ``forbid``); ``context.kmsViaService == ""`` means "called directly".
``kmsRequestId`` is left out on purpose: it differs on every request, and decisions are cached.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, NamedTuple

import cedarpy

from xks_proxy.model import RequestMetadata

PRINCIPAL_TYPE = "Aws::Principal"
ACTION_TYPE = "Kms::Action"
XKS_ACTION_TYPE = "Xks::Action"
RESOURCE_TYPE = "Xks::Key"
# Distinct (kmsOperation, XKS operation) pairs whose action entities are kept parsed.
ACTION_ENTITIES_CACHED = 256


class AuthzInput(NamedTuple):
    """Everything a decision depends on; hashable, so it is also the decision cache's key.

    A tuple, not a frozen dataclass: it is built for every request, and a tuple builds and
    hashes several times faster (tools/authz_bench.py).
    """

    key_store: str
    key_id: str
    xks_operation: str
    kms_operation: str
    principal: str
    kms_key_arn: str
    kms_via_service: str
    aws_source_vpc: str
    aws_source_vpce: str

    @classmethod
    def of(
        cls, key_store: str, key_id: str, xks_operation: str, metadata: RequestMetadata
    ) -> AuthzInput:
        # Positional: keyword arguments make this per-request call twice as slow.
        return cls(
            key_store,
            key_id,
            xks_operation,
            metadata.kms_operation,
            metadata.aws_principal_arn or "",
            metadata.kms_key_arn or "",
            metadata.kms_via_service or "",
            metadata.aws_source_vpc or "",
            metadata.aws_source_vpce or "",
        )

    def cedar_request(self) -> dict[str, Any]:
        # The {type, id} form takes any id (ARNs, odd kmsOperation values) without quoting.
        return {
            "principal": {"type": PRINCIPAL_TYPE, "id": self.principal},
            "action": {"type": ACTION_TYPE, "id": self.kms_operation},
            "resource": {"type": RESOURCE_TYPE, "id": self.key_id},
            "context": {
                # Also here: Cedar cannot read an entity id as a string, and the caller's
                # account and region (§6.5) are only in the ARN (``like "arn:aws:iam::1111:*"``).
                "awsPrincipalArn": self.principal,
                "kmsKeyArn": self.kms_key_arn,
                "kmsOperation": self.kms_operation,
                "xksOperation": self.xks_operation,
                "kmsViaService": self.kms_via_service,
                "awsSourceVpc": self.aws_source_vpc,
                "awsSourceVpce": self.aws_source_vpce,
                "keyStore": self.key_store,
            },
        }


@lru_cache(maxsize=ACTION_ENTITIES_CACHED)
def action_entities(kms_operation: str, xks_operation: str) -> cedarpy.Entities:
    """The action hierarchy of one request: ``Kms::Action`` in ``Xks::Action``."""
    parent = {"type": XKS_ACTION_TYPE, "id": xks_operation}
    document = [
        {"uid": {"type": ACTION_TYPE, "id": kms_operation}, "attrs": {}, "parents": [parent]},
        {"uid": parent, "attrs": {}, "parents": []},
    ]
    return cedarpy.Entities.from_json_str(json.dumps(document))
