"""``xks-proxy keys backup``, ``keys restore`` and ``keys migrate``: the whole software key
store at once, to a passphrase-sealed file and back, or to another store (SQLite <-> PostgreSQL).

The passphrase comes from the environment variable ``--passphrase-env`` names, never from argv;
``--from``/``--to`` take ``env:NAME`` so a database password stays out of argv too.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from xks_proxy.command_support import (
    ConfigArgument,
    command_config,
    key_store_command,
    software_backend,
)
from xks_proxy.config import resolve_secret
from xks_proxy.errors import CommandError, ConfigError
from xks_proxy.key_commands import key_manager
from xks_proxy.keystore.location import StoreLocation
from xks_proxy.keystore.records import KeyExistsError


def _passphrase(args: argparse.Namespace) -> str:
    """From the environment variable named by --passphrase-env: never argv, never a file."""
    passphrase = os.environ.get(args.passphrase_env)
    if not passphrase:
        raise ConfigError(
            f"--passphrase-env: environment variable {args.passphrase_env} is not set"
        )
    return passphrase


@key_store_command
def cmd_keys_backup(args: argparse.Namespace) -> int:
    from xks_proxy.credentials import write_private_file
    from xks_proxy.keymgmt.backup import BackupError

    passphrase = _passphrase(args)
    try:
        with key_manager(args) as keys:
            document, count, credentials = keys.backup(passphrase)
    except BackupError as error:
        raise CommandError(str(error)) from None
    write_private_file(Path(args.out), document)
    print(
        f"backed up {count} keys and {credentials} stored credentials to {args.out} (0600); "
        "keep the passphrase apart from it"
    )
    return 0


@key_store_command
def cmd_keys_restore(args: argparse.Namespace) -> int:
    from xks_proxy.keymgmt.backup import BackupError

    passphrase = _passphrase(args)
    try:
        document = Path(args.input).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise CommandError(f"cannot read {args.input}: {error}") from None
    try:
        with key_manager(args) as keys:
            result = keys.restore(document, passphrase)
    except BackupError as error:
        raise CommandError(str(error)) from None
    print(
        f"restored {len(result.restored)} keys; {len(result.already_present)} were already "
        "in the store with the same material"
    )
    if result.credentials_restored or result.credentials_present or result.credentials_revoked:
        print(
            f"restored {len(result.credentials_restored)} stored credentials; "
            f"{len(result.credentials_present)} were already in the store with the same secret"
        )
    for access_key_id in result.credentials_revoked:
        print(f"credential {access_key_id} was revoked in the store since; it stays revoked")
    return 0


def _store_argument(value: str, option: str) -> StoreLocation:
    """``sqlite:PATH`` or ``postgresql://…``, or ``env:NAME`` holding one (keeps passwords out
    of argv)."""
    try:
        return StoreLocation.parse(resolve_secret(value, option, Path.cwd(), os.environ))
    except ValueError:
        raise ConfigError(f"{option}: give sqlite:PATH, postgresql://... or env:NAME") from None


@key_store_command
def cmd_keys_migrate(args: argparse.Namespace) -> int:
    from xks_proxy.keymgmt.audit import LifecycleAudit, local_actor
    from xks_proxy.keymgmt.migrate import migrate_keys
    from xks_proxy.keystore.store import KeyDatabase

    source_location = _store_argument(args.source, "--from")
    destination_location = _store_argument(args.destination, "--to")
    if source_location == destination_location:
        raise ConfigError("--from and --to name the same store")
    config = command_config(args) if args.config else None
    kek = software_backend(config, args.backend).kek if config is not None else None
    moved = f"from {source_location.display} to {destination_location.display}"

    def audit(outcome: str, detail: str) -> None:
        # Without --config there is no audit log to write to (the command says so in --help).
        if config is not None:
            LifecycleAudit(config.audit).record(
                actor=local_actor(), action="migrate", key_id=None, outcome=outcome, detail=detail
            )

    source = KeyDatabase(source_location, kek)
    try:
        destination = KeyDatabase(destination_location, kek)
        try:
            result = migrate_keys(source, destination, verify=kek is not None)
        except KeyExistsError as error:
            audit("refused", f"{moved}: key {error} exists there")
            raise CommandError(
                f"{destination_location.display} already has key {error}; nothing was copied"
            ) from None
        except (ConfigError, CommandError) as error:
            audit("refused", f"{moved}: {error}"[:300])
            raise
        finally:
            destination.close()
    finally:
        source.close()
    credentials = f" and {result.credentials} credentials" if result.credentials else ""
    copied = f"{result.keys} keys ({result.versions} versions){credentials}"
    audit("success", f"{copied} {moved}")
    print(
        f"copied {copied} {moved}, sealed as they were"
        + ("" if kek is not None else " (not verified: give --config to check the kek)")
    )
    return 0


def add_key_backup_commands(
    key_commands: argparse._SubParsersAction[argparse.ArgumentParser], config_arg: ConfigArgument
) -> None:
    backup = key_commands.add_parser(
        "backup", help="write every key, sealed under a passphrase (scrypt, AES-256-GCM)"
    )
    restore = key_commands.add_parser(
        "restore", help="restore keys from a backup into an empty or the same store"
    )
    for sub in (backup, restore):
        config_arg(sub)
        sub.add_argument("--backend", help="software backend name (default: the only one)")
        sub.add_argument(
            "--passphrase-env", required=True, help="environment variable holding the passphrase"
        )
    backup.add_argument("--out", required=True, help="the backup file to write (0600)")
    backup.set_defaults(func=cmd_keys_backup, key_id=None)
    restore.add_argument("--in", dest="input", required=True, help="the backup file")
    restore.set_defaults(func=cmd_keys_restore, key_id=None)

    migrate = key_commands.add_parser(
        "migrate", help="copy every key to another store (SQLite <-> PostgreSQL), same kek"
    )
    migrate.add_argument(
        "--from", dest="source", required=True, help="sqlite:PATH | postgresql://... | env:NAME"
    )
    migrate.add_argument(
        "--to", dest="destination", required=True, help="sqlite:PATH | postgresql://... | env:NAME"
    )
    migrate.add_argument(
        "--config", help="check every version unseals under its kek; audit to its audit log"
    )
    migrate.add_argument("--backend", help="software backend name (default: the only one)")
    migrate.set_defaults(func=cmd_keys_migrate)
