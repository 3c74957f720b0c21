"""``xks-proxy policy test``: what a key store's Cedar policies decide for one request.

``--request FILE`` is a JSON object naming the XKS operation, the key and the request metadata:
either an audit log line as it is (``xksOperation``, ``keyId``, ``kmsOperation``,
``awsPrincipalArn``, ``kmsKeyArn``, ``kmsViaService``, ``awsSourceVpc``, ``awsSourceVpce``), so a
denied request can be replayed against an edited policy, or ``xksOperation`` and ``keyId`` next
to a ``requestMetadata`` object as KMS sends it. A ``keyStore`` field is ignored: ``--key-store``
names the key store.

Prints the decision and the policies that made it, with their source. Exit status: 0 allow,
1 deny, 2 for a configuration, policy or request file that cannot be used.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from xks_proxy.config import KeyStoreConfig, load_config
from xks_proxy.errors import ConfigError
from xks_proxy.model import RequestMetadata, audit_metadata

if TYPE_CHECKING:
    from xks_proxy.authz.authorizer import Authorizer, Decision

ALLOW, DENY = 0, 1
HEALTH = "GetHealthStatus"
XKS_OPERATIONS = ("GetKeyMetadata", "Encrypt", "Decrypt", HEALTH)


def _read_request(path: Path) -> tuple[str, str, RequestMetadata]:
    where = f"--request {path}"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConfigError(f"{where}: cannot read a JSON object from it ({error})") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{where}: must be a JSON object")
    operation = document.get("xksOperation")
    if operation not in XKS_OPERATIONS:
        raise ConfigError(f"{where}: xksOperation must be one of {', '.join(XKS_OPERATIONS)}")
    nested = isinstance(document.get("requestMetadata"), dict)
    metadata = audit_metadata(document if nested else {"requestMetadata": document})
    assert metadata is not None
    key_id = document.get("keyId")
    if operation != HEALTH:
        if not isinstance(key_id, str) or not key_id:
            raise ConfigError(f"{where}: keyId (the external key id) is required")
        if not metadata.kms_operation or metadata.aws_principal_arn is None:
            raise ConfigError(f"{where}: kmsOperation and awsPrincipalArn are required")
    return operation, key_id if isinstance(key_id, str) else "", metadata


def _print_decision(authorizer: Authorizer, decision: Decision) -> None:
    print(f"decision: {'ALLOW' if decision.allowed else 'DENY'}")
    if not decision.policies:
        print("determining policies: none (no permit matched: Cedar denies by default)")
    else:
        print("determining policies:")
    by_name = {policy.name: policy for policy in authorizer.policies.policies.values()}
    for name in decision.policies:
        policy = by_name.get(name)
        if policy is None:
            print(f"  {name}")
            continue
        print(f"  {name} (line {policy.line}):")
        for line in policy.text.splitlines():
            print(f"    {line}")
    for error in decision.errors:
        print(f"evaluation error (denies): {error}")


def cmd_policy_test(args: argparse.Namespace) -> int:
    # cedarpy takes a tenth of a second to import: only this command pays for it.
    from xks_proxy.authz.load import load_authorizers
    from xks_proxy.authz.request import AuthzInput

    # Never opens a backend: deciding needs the policies, not the keys.
    config = load_config(Path(args.config), with_backends=False)
    store: KeyStoreConfig = config.key_store(args.key_store)
    operation, key_id, metadata = _read_request(Path(args.request))
    authorizer = load_authorizers(config)[store.name]
    print(f"key store: {store.name}")
    if operation == HEALTH:
        print("decision: ALLOW (GetHealthStatus is never subject to authorization, §6.5)")
        return ALLOW
    if authorizer is None:
        print("decision: ALLOW (the key store has no authorization_policy)")
        return ALLOW
    print(f"policy file: {store.authorization_policy}")
    print(
        f"request: {operation} (kmsOperation {metadata.kms_operation}) on key {key_id} "
        f"by {metadata.aws_principal_arn}"
    )
    decision = authorizer.evaluate(AuthzInput.of(store.name, key_id, operation, metadata))
    _print_decision(authorizer, decision)
    return ALLOW if decision.allowed else DENY


def add_policy_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    config_arg: Callable[[argparse.ArgumentParser], None],
) -> None:
    policy = commands.add_parser("policy", help="secondary-authorization (Cedar) policies")
    actions = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    test = actions.add_parser(
        "test",
        help="print what a key store's policies decide for a request (exit 0 allow, 1 deny)",
    )
    config_arg(test)
    test.add_argument("--key-store", help="key store name or URI path (default: the only one)")
    test.add_argument(
        "--request",
        required=True,
        metavar="FILE",
        help="JSON: an audit log line, or xksOperation, keyId and requestMetadata",
    )
    test.set_defaults(func=cmd_policy_test)
