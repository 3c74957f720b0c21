"""``xks-proxy credentials``: SigV4 credentials of key stores, for one host or a whole fleet.

KMS holds exactly one credential per external key store, and every proxy of a fleet must accept
it. So a rotation makes the credential once and installs that same credential on every host:
``create`` generates it (``--secret-out FILE`` also writes the secret to a 0600 file), ``add``
installs a given one, reading the secret from standard input or a file, never from argv (argv
is visible to every local user in ``ps``). ``add`` is idempotent for the same secret, so a
deployment script can run it again; another secret under the same access key id is refused.

A key store with no credential answers every request 401, so ``revoke`` refuses to remove a
key store's last credential unless ``--force``, and start-up and reload refuse a configuration
that leaves a key store without one (``Config.check_serving``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from xks_proxy.config import Config, KeyStoreConfig, load_config, validate_credential
from xks_proxy.credentials import CredentialsFile, generate_credential, write_private_file
from xks_proxy.errors import CommandError, ConfigError

Command = Callable[[argparse.Namespace], int]


def credentials_file(config: Config) -> CredentialsFile:
    if config.credentials_file is None:
        raise ConfigError("credentials_file: not set, so the CLI cannot manage credentials")
    return CredentialsFile(config.credentials_file)


def _config_and_store(args: argparse.Namespace) -> tuple[Config, KeyStoreConfig]:
    # Credential commands never use a backend, so they need none of its secrets (PIN, KEK).
    config = load_config(Path(args.config), with_backends=False)
    return config, config.key_store(args.key_store)


def cmd_create(args: argparse.Namespace) -> int:
    config, store = _config_and_store(args)
    entry = credentials_file(config).add(store.name, generate_credential())
    if args.secret_out:
        write_private_file(Path(args.secret_out), entry.secret_access_key + "\n")
    document = {
        "keyStore": store.name,
        "uriPath": store.uri_path,
        "AccessKeyId": entry.access_key_id,
        "RawSecretAccessKey": entry.secret_access_key,
    }
    print(json.dumps(document, indent=2))
    print(
        "Install the same credential on every other proxy of the fleet with `xks-proxy "
        f"credentials add --access-key-id {entry.access_key_id} --secret-file FILE`, reload "
        "them, then give it to KMS.",
        file=sys.stderr,
    )
    return 0


def _read_secret(args: argparse.Namespace) -> str:
    if args.secret_stdin:
        return sys.stdin.readline().strip()
    try:
        return Path(args.secret_file).read_text().strip()
    except OSError as error:
        raise CommandError(f"--secret-file {args.secret_file}: {error.strerror}") from None


def cmd_add(args: argparse.Namespace) -> int:
    config, store = _config_and_store(args)
    credential = validate_credential(args.access_key_id, _read_secret(args), "--secret")
    for other in config.key_stores:
        for existing in other.credentials:
            if existing.access_key_id != credential.access_key_id:
                continue
            if other.name == store.name and existing == credential:
                print(f"key store {store.name} already has {credential.access_key_id}")
                return 0
            # XKS spec §6.2: an access key id identifies exactly one secret.
            raise CommandError(
                f"access key id {credential.access_key_id} is already in use by key store "
                f"{other.name} with another secret"
            )
    credentials_file(config).add(store.name, credential)
    print(f"added {credential.access_key_id} to key store {store.name}; reload to apply")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    config = load_config(Path(args.config), with_backends=False)
    stores = [config.key_store(args.key_store)] if args.key_store else list(config.key_stores)
    managed = (
        {e.access_key_id: e for e in credentials_file(config).entries()}
        if config.credentials_file
        else {}
    )
    for store in stores:
        for credential in store.credentials:
            entry = managed.get(credential.access_key_id)
            origin = f"created {entry.created_at}" if entry else "inline in the configuration"
            print(f"{store.name}  {credential.access_key_id}  {origin}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    config, store = _config_and_store(args)
    if args.access_key_id not in {c.access_key_id for c in store.credentials}:
        raise CommandError(f"key store {store.name} has no credential {args.access_key_id}")
    if len(store.credentials) == 1 and not args.force:
        raise CommandError(
            f"{args.access_key_id} is the last credential of key store {store.name}: without "
            "it every request is refused (add the new one first, or use --force)"
        )
    if credentials_file(config).remove(args.access_key_id) is None:
        raise CommandError(
            f"{args.access_key_id} is written in the configuration file; remove it there"
        )
    print(f"revoked {args.access_key_id} from key store {store.name}")
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
        config_arg(sub)
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
