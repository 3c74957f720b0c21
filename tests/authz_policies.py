"""The README's example policies (section "Secondary authorization"), shared by the tests."""

from __future__ import annotations

ALICE = "arn:aws:iam::123456789012:user/Alice"
BOB = "arn:aws:iam::123456789012:user/Bob"
EBS = "ebs"
VPCE = "vpce-0123456789abcdef0"

BASELINE = '@id("allow-the-rest")\npermit (principal, action, resource);\n'

ONLY_EBS = (
    BASELINE
    + """
// Only EBS may use key-both.
@id("key-both-only-through-ebs")
forbid (principal, action, resource == Xks::Key::"key-both")
unless { context.kmsViaService == "ebs" };
"""
)

DECRYPT_ONLY_FROM_VPCE = (
    BASELINE
    + """
// Decrypt only from one VPC endpoint.
@id("decrypt-only-from-vpce")
forbid (principal, action in Xks::Action::"Decrypt", resource)
unless { context.awsSourceVpce == "vpce-0123456789abcdef0" };
"""
)

ALICE_ENCRYPTS_ONLY = (
    BASELINE
    + """
// Alice may encrypt but not decrypt.
@id("alice-may-not-decrypt")
forbid (
  principal == Aws::Principal::"arn:aws:iam::123456789012:user/Alice",
  action in Xks::Action::"Decrypt",
  resource
);
"""
)

DENY_ALL = '@id("nothing")\nforbid (principal, action, resource);\n'
