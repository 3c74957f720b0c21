"""``xks-proxy policy test``: what a key store's Cedar policies decide for one request.

``--request FILE`` is a request document as ``authz/explain.py`` describes it (an audit log line
as it is, or ``xksOperation``, ``keyId`` and ``requestMetadata``); ``--key-store`` names the key
store. With ``--admin-url``/``--token-file`` the admin API's ``policy/explain`` decides, with the
policies of the running proxy's host.

Prints the decision and the policies that made it, with their source. Exit status: 0 allow,
1 deny, 2 for a configuration, policy or request file that cannot be used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xks_proxy.config import KeyStoreConfig, load_config
from xks_proxy.errors import ConfigError

if TYPE_CHECKING:
    from xks_proxy.admin.client import RemotePolicies
    from xks_proxy.authz.authorizer import Authorizer
    from xks_proxy.authz.explain import ExplainRequest

ALLOW, DENY = 0, 1


def _read_request(path: Path) -> tuple[Any, str]:
    where = f"--request {path}"
    try:
        return json.loads(path.read_text(encoding="utf-8")), where
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConfigError(f"{where}: cannot read a JSON object from it ({error})") from None


def print_explanation(answer: dict[str, Any]) -> int:
    """Print ``Explanation.as_json()`` (local or from the admin API); the exit status."""
    if answer.get("reason"):
        print(f"decision: {answer['decision']} ({answer['reason']})")
        return ALLOW if answer["decision"] == "ALLOW" else DENY
    print(f"decision: {answer['decision']}")
    policies = answer["determiningPolicies"]
    if not policies:
        print("determining policies: none (no permit matched: Cedar denies by default)")
    else:
        print("determining policies:")
    for policy in policies:
        if policy["text"] is None:
            print(f"  {policy['id']}")
            continue
        print(f"  {policy['id']} (line {policy['line']}):")
        for line in policy["text"].splitlines():
            print(f"    {line}")
    for error in answer["errors"]:
        print(f"evaluation error (denies): {error}")
    return ALLOW if answer["decision"] == "ALLOW" else DENY


def _describe(request: ExplainRequest) -> str:
    metadata = request.metadata
    return (
        f"request: {request.xks_operation} (kmsOperation {metadata.kms_operation}) on key "
        f"{request.key_id} by {metadata.aws_principal_arn}"
    )


def _stored_authorizer(config_path: Path, store: KeyStoreConfig) -> tuple[Authorizer | None, str]:
    """The authorizer of a policy kept in the key store database (``authz/stored.py``)."""
    from xks_proxy.authz.authorizer import Authorizer
    from xks_proxy.authz.policy import PolicyError
    from xks_proxy.authz.stored import parse_stored, read_stored_policy

    # The database's location and KEK are in the backend's configuration.
    row = read_stored_policy(load_config(config_path), store)
    if row is None:
        return None, ""
    try:
        policies = parse_stored(row)
    except PolicyError as error:
        raise ConfigError(str(error)) from None
    where = f"policy: key store database, revision {row.revision}, put by {row.updated_by}"
    return Authorizer(store.name, policies), where


def cmd_policy_test(args: argparse.Namespace) -> int:
    # cedarpy takes a tenth of a second to import: only this command pays for it.
    from xks_proxy.authz.explain import HEALTH, explain, request_from_document
    from xks_proxy.authz.load import load_authorizers

    document, where = _read_request(Path(args.request))
    if args.admin_url:
        from xks_proxy.admin.client import AdminClient, RemotePolicies

        client = AdminClient.from_options(args.admin_url, args.token_file, args.admin_cacert)
        remote = RemotePolicies(client, args.key_store)
        request_from_document(document, where)  # the same refusals as locally, before a call
        answer = remote.explain(document)
        print(f"key store: {answer['keyStore']}")
        return print_explanation(answer)
    if not args.config:
        raise ConfigError("--config is required (or --admin-url with --token-file)")
    # Never opens a backend: deciding needs the policies, not the keys.
    config = load_config(Path(args.config), with_backends=False)
    store: KeyStoreConfig = config.key_store(args.key_store)
    request = request_from_document(document, where)
    if store.authorization_policy_in_store:
        authorizer, source = _stored_authorizer(Path(args.config), store)
    else:
        authorizer = load_authorizers(config)[store.name]
        source = f"policy file: {store.authorization_policy}"
    print(f"key store: {store.name}")
    if request.xks_operation != HEALTH and authorizer is not None:
        print(source)
        print(_describe(request))
    return print_explanation(explain(store.name, authorizer, request).as_json())


def _policy_file_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--file {path}: cannot read it ({error})") from None


def _remote(args: argparse.Namespace) -> RemotePolicies:
    from xks_proxy.admin.client import AdminClient, RemotePolicies

    if not args.admin_url:
        raise ConfigError(
            "--admin-url and --token-file are required: locally, edit the policy file and run "
            "`xks-proxy reload`"
        )
    client = AdminClient.from_options(args.admin_url, args.token_file, args.admin_cacert)
    return RemotePolicies(client, args.key_store)


def cmd_policy_put(args: argparse.Namespace) -> int:
    """Validate, install and hot-reload a key store's policy through the admin API."""
    answer = _remote(args).put(_policy_file_text(args.file))
    ids = ", ".join(p["id"] for p in answer["policies"]) or "none"
    store, file = answer["keyStore"], answer["policyFile"]
    print(f"key store {store}: {file} replaced ({ids}); reload requested")
    for warning in answer["warnings"]:
        print(f"warning: {warning}")
    return 0


def cmd_policy_validate(args: argparse.Namespace) -> int:
    """What start-up would say about a policy file: exit 0 valid, 1 not."""
    text = _policy_file_text(args.file)
    if args.admin_url:
        answer = _remote(args).validate(text)
    else:
        from xks_proxy.admin.api_policies import CANDIDATE, summarize_policies

        answer = summarize_policies(text, CANDIDATE)
    if not answer["valid"]:
        print(f"invalid: {answer['error']}")
        return 1
    print(f"valid: {', '.join(p['id'] for p in answer['policies']) or 'no policies'}")
    for warning in answer["warnings"]:
        print(f"warning: {warning}")
    return 0


def add_policy_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    from xks_proxy.admin.client import add_admin_url_options

    policy = commands.add_parser("policy", help="secondary-authorization (Cedar) policies")
    actions = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    test = actions.add_parser(
        "test",
        help="print what a key store's policies decide for a request (exit 0 allow, 1 deny)",
    )
    test.add_argument(
        "--request",
        required=True,
        metavar="FILE",
        help="JSON: an audit log line, or xksOperation, keyId and requestMetadata",
    )
    test.set_defaults(func=cmd_policy_test)
    put = actions.add_parser(
        "put", help="validate a policy file and put it in force (through the admin API)"
    )
    put.set_defaults(func=cmd_policy_put)
    validate = actions.add_parser(
        "validate", help="parse a policy file as start-up would (exit 0 valid, 1 not)"
    )
    validate.set_defaults(func=cmd_policy_validate)
    for action in (put, validate):
        action.add_argument("--file", required=True, help="the Cedar policy file")
    for action in (test, put, validate):
        add_admin_url_options(action)
        action.add_argument(
            "--key-store", help="key store name or URI path (default: the only one)"
        )
