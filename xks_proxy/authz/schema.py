"""The entity model as a Cedar schema, to warn about policies that can never work as written.

A typo such as ``context.kmsViaServce`` parses, then fails to evaluate on every request, which
the authorizer treats as a deny: safe, but a surprise in production. Validating against this
schema finds it when the file is loaded. The findings are warnings, not errors, because Cedar's
validator also flags actions it does not know, and a policy may rightly name a kmsOperation KMS
will only send in future (xks-spec §3.2); the schema lists the ones the spec names.
"""

from __future__ import annotations

import cedarpy

_CONTEXT = "principal: Aws::Principal, resource: Xks::Key, context: Context"
SCHEMA = f"""
namespace Aws {{ entity Principal; }}
namespace Xks {{
  entity Key;
  action "Encrypt", "Decrypt", "GetKeyMetadata";
}}
namespace Kms {{
  type Context = {{
    awsPrincipalArn: String, kmsKeyArn: String, kmsOperation: String, xksOperation: String,
    kmsViaService: String, awsSourceVpc: String, awsSourceVpce: String, keyStore: String,
  }};
  action "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext"
    in [Xks::Action::"Encrypt"] appliesTo {{ {_CONTEXT} }};
  action "ReEncrypt"
    in [Xks::Action::"Encrypt", Xks::Action::"Decrypt"] appliesTo {{ {_CONTEXT} }};
  action "Decrypt" in [Xks::Action::"Decrypt"] appliesTo {{ {_CONTEXT} }};
  action "CreateKey" in [Xks::Action::"GetKeyMetadata"] appliesTo {{ {_CONTEXT} }};
}}
"""
_PARSED = cedarpy.Schema.from_str(SCHEMA)


def schema_findings(text: str) -> list[tuple[str, str]]:
    """(cedarpy policy id, message) for each distinct problem the validator finds."""
    result = cedarpy.validate_policies(text, _PARSED)
    findings: list[tuple[str, str]] = []
    for error in result.errors:
        finding = (error.policy_id, error.error)
        if finding not in findings:
            findings.append(finding)
    return findings
