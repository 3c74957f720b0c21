"""``xks-proxy credentials``: SigV4 credentials of key stores, for one host or a whole fleet.

KMS holds exactly one credential per external key store, and every proxy of a fleet must accept
it. So a rotation makes the credential once and installs that same credential on every host:
``create`` generates it (``--secret-out FILE`` also writes the secret to a 0600 file), ``add``
installs a given one, reading the secret from standard input or a file, never from argv (argv
is visible to every local user in ``ps``). ``add`` is idempotent for the same secret, so a
deployment script can run it again; another secret under the same access key id is refused.

With ``credentials_store = "database"`` a key store's credentials live in the shared key store
instead of this host's file, and a command on any one host reaches every proxy within a second
(no ``add`` on the other hosts, no reload): ``credential_service`` decides where.

A key store with no credential answers every request 401, so ``revoke`` refuses to remove a
key store's last credential unless ``--force``, and start-up and reload refuse a configuration
that leaves a key store without one (``Config.check_serving``).

With ``--admin-url URL --token-file F`` each command runs on the proxy through the admin API
(``admin/client.py``) instead of on this host's files: the same ``credential_service`` runs there.

Run locally, ``create``, ``add`` and ``revoke`` each write one ``keyLifecycle`` audit line to the
configuration's audit log (who, which key store and access key id, the outcome; never a secret);
through the admin API, the API writes its own ``adminRequest`` line.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path

from xks_proxy.admin.client import AdminClient, RemoteCredentials, add_admin_url_options
from xks_proxy.config import load_config
from xks_proxy.credentials import write_private_file
from xks_proxy.errors import CommandError, ConfigError
from xks_proxy.keystore.records import KeyStoreUnavailableError

Command = Callable[[argparse.Namespace], int]


def remote(args: argparse.Namespace) -> RemoteCredentials | None:
    """The admin API's credentials when ``--admin-url`` is given, else None (local files)."""
    if not args.admin_url:
        if not args.config:
            raise ConfigError("--config is required (or --admin-url with --token-file)")
        return None
    client = AdminClient.from_options(args.admin_url, args.token_file, args.admin_cacert)
    return RemoteCredentials(client, args.key_store)


def audit(args: argparse.Namespace, action: str, outcome: str, detail: str) -> None:
    """One lifecycle line for a local credential change; no line if the configuration (and so
    its audit log) cannot be read: the command's own error says why."""
    from xks_proxy.keymgmt.audit import LifecycleAudit, local_actor

    if not args.config:
        return
    try:
        config = load_config(Path(args.config), with_backends=False)
    except ConfigError:
        return
    LifecycleAudit(config.audit).record(
        actor=local_actor(), action=f"credentials-{action}", key_id=None, outcome=outcome,
        detail=detail[:300],
    )  # fmt: skip


def audited(action: str) -> Callable[[Command], Command]:
    """Audit a refused local ``action`` (the command audits its own success, with the ids)."""

    def wrap(command: Command) -> Command:
        @functools.wraps(command)
        def run(args: argparse.Namespace) -> int:
            if args.admin_url:
                return command(args)
            try:
                return command(args)
            except (CommandError, ConfigError, OSError) as error:
                outcome = (
                    "failed" if isinstance(error, KeyStoreUnavailableError | OSError) else "refused"
                )
                where = f"key store {args.key_store or '(the only one)'}"
                # A full disk fails the audit line too: the command's own error is the one to show.
                with contextlib.suppress(OSError):
                    audit(args, action, outcome, f"{where}: {type(error).__name__}: {error}")
                raise

        return run

    return wrap


@audited("create")
def cmd_create(args: argparse.Namespace) -> int:
    from xks_proxy import credential_service  # the key store: only when a command runs

    api = remote(args)
    if api is not None:
        document = api.create()
    else:
        store, entry = credential_service.create(Path(args.config), args.key_store)
        audit(args, "create", "success", f"key store {store.name}, {entry.access_key_id}")
        document = {
            "keyStore": store.name,
            "uriPath": store.uri_path,
            "AccessKeyId": entry.access_key_id,
            "RawSecretAccessKey": entry.secret_access_key,
        }
    if args.secret_out:
        write_private_file(Path(args.secret_out), document["RawSecretAccessKey"] + "\n")
    print(json.dumps(document, indent=2))
    if api is None and credential_service.applied_at_once(Path(args.config), args.key_store):
        hint = "Every proxy sharing the key store accepts it within a second; give it to KMS."
    else:
        hint = (
            "Install the same credential on every other proxy of the fleet with `xks-proxy "
            f"credentials add --access-key-id {document['AccessKeyId']} --secret-file FILE`, "
            'reload them, then give it to KMS (with credentials_store = "database" every '
            "proxy has it within a second)."
        )
    print(hint, file=sys.stderr)
    return 0


def read_secret(args: argparse.Namespace) -> str:
    if args.secret_stdin:
        return sys.stdin.readline().strip()
    try:
        return Path(args.secret_file).read_text().strip()
    except OSError as error:
        raise CommandError(f"--secret-file {args.secret_file}: {error.strerror}") from None


@audited("add")
def cmd_add(args: argparse.Namespace) -> int:
    from xks_proxy import credential_service  # the key store: only when a command runs

    api = remote(args)
    secret = read_secret(args)
    store, added = (
        api.add(args.access_key_id, secret)
        if api is not None
        else credential_service.add(Path(args.config), args.key_store, args.access_key_id, secret)
    )
    if api is None:
        done = "added" if added else "already there"
        audit(args, "add", "success", f"key store {store}, {args.access_key_id} {done}")
    if added and api is None and credential_service.applied_at_once(Path(args.config), store):
        print(f"added {args.access_key_id} to key store {store}; every proxy applies it at once")
    elif added:
        print(f"added {args.access_key_id} to key store {store}; reload to apply")
    else:
        print(f"key store {store} already has {args.access_key_id}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from xks_proxy import credential_service  # the key store: only when a command runs

    api = remote(args)
    if api is not None:
        for document in api.list_credentials():
            print(f"{document['keyStore']}  {document['accessKeyId']}  {document['origin']}")
        return 0
    for row in credential_service.list_credentials(Path(args.config), args.key_store):
        print(f"{row.key_store}  {row.access_key_id}  {row.origin}")
    return 0


@audited("revoke")
def cmd_revoke(args: argparse.Namespace) -> int:
    from xks_proxy import credential_service  # the key store: only when a command runs

    api = remote(args)
    name = (
        api.revoke(args.access_key_id, args.force)
        if api is not None
        else credential_service.revoke(
            Path(args.config), args.key_store, args.access_key_id, args.force
        )
    )
    if api is None:
        forced = " (forced)" if args.force else ""
        audit(args, "revoke", "success", f"key store {name}, {args.access_key_id}{forced}")
    print(f"revoked {args.access_key_id} from key store {name}")
    return 0


def add_credential_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    config_arg: Callable[[argparse.ArgumentParser], None],
) -> None:
    creds = commands.add_parser("credentials", help="manage SigV4 credentials of key stores")
    actions = creds.add_subparsers(dest="credentials_command", required=True, metavar="ACTION")
    table: list[tuple[str, str, Command]] = [
        ("create", "generate a credential (several may be live at once)", cmd_create),
        ("add", "install a given credential (the same on every proxy of a fleet)", cmd_add),
        ("list", "list access key ids (never secrets)", cmd_list),
        ("revoke", "remove a credential", cmd_revoke),
    ]
    for action, help_text, func in table:
        sub = actions.add_parser(action, help=help_text)
        add_admin_url_options(sub)
        sub.add_argument("--key-store", help="key store name or URI path (default: the only one)")
        sub.set_defaults(func=func)
        if action == "create":
            sub.add_argument(
                "--secret-out", metavar="PATH", help="also write the secret to PATH (0600)"
            )
        if action in ("add", "revoke"):
            sub.add_argument("--access-key-id", required=True)
        if action == "add":
            source = sub.add_mutually_exclusive_group(required=True)
            source.add_argument(
                "--secret-stdin", action="store_true", help="read the secret from stdin"
            )
            source.add_argument("--secret-file", metavar="PATH", help="read the secret from PATH")
        if action == "revoke":
            sub.add_argument(
                "--force", action="store_true", help="allow removing the last credential"
            )
