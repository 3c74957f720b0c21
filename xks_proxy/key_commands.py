"""``xks-proxy keys``: the lifecycle of the software key store's keys (create, list, enable,
disable, rotate, schedule-deletion, cancel-deletion) and bring-your-own-key import
(import-parameters, import, delete-material).

With ``--admin-url URL --token-file F`` each runs on the proxy through the admin API
(``admin/client.py``), else on the store the configuration names (``KeyManager``). HSM keys:
``keys list`` and ``keys rotate`` only (``keymgmt/hsm.py``).

The key store, the token library and the key import's cryptography are imported by the actions
that use them, not with the parser: ``xks-proxy serve`` registers these commands too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from xks_proxy.admin.client import AdminClient, RemoteKeys, add_admin_url_options
from xks_proxy.command_support import (
    USAGES,
    Command,
    ConfigArgument,
    command_config,
    describe_os_error,
    has_hsm_backend,
    key_store_command,
)
from xks_proxy.config import require_key_id
from xks_proxy.errors import CommandError, ConfigError
from xks_proxy.keymgmt.limits import (
    DEFAULT_DELETION_DAYS,
    DEFAULT_WRAPPING_KEY_SPEC,
    HSM_KEYS_HINT,
    MAX_DELETION_DAYS,
    MIN_DELETION_DAYS,
    WRAPPING_ALGORITHMS,
    WRAPPING_KEY_BITS,
)
from xks_proxy.keystore.records import KeyExistsError, KeyStateError, UnknownKeyError

if TYPE_CHECKING:
    from xks_proxy.keymgmt.service import KeyManager


@contextlib.contextmanager
def key_manager(args: argparse.Namespace) -> Iterator[KeyManager]:
    """The key lifecycle service over the configured store; store refusals become exit 1."""
    from xks_proxy.keymgmt.audit import LifecycleAudit, local_actor
    from xks_proxy.keymgmt.hsm import open_lifecycle_keys
    from xks_proxy.keymgmt.service import KeyManager
    from xks_proxy.keystore.store import KeyDatabase

    config = command_config(args)
    database = open_lifecycle_keys(config, args.backend)
    try:
        yield KeyManager(database, LifecycleAudit(config.audit), local_actor())
    except UnknownKeyError:
        if isinstance(database, KeyDatabase):
            hint = f" ({HSM_KEYS_HINT})" if has_hsm_backend(config) else ""
            raise CommandError(f"no key {args.key_id} in the software key store{hint}") from None
        raise CommandError(f"no key {args.key_id} on the HSM token") from None
    except KeyExistsError:
        raise CommandError(f"key {args.key_id} already exists") from None
    except KeyStateError as error:
        raise CommandError(str(error)) from None
    finally:
        database.close()


@contextlib.contextmanager
def _key_actions(args: argparse.Namespace) -> Iterator[KeyManager | RemoteKeys]:
    """The admin API's keys with ``--admin-url``, else the local key store's ``KeyManager``."""
    if args.admin_url:
        client = AdminClient.from_options(args.admin_url, args.token_file, args.admin_cacert)
        yield RemoteKeys(client, args.key_store)
        return
    if not args.config:
        raise ConfigError("--config is required (or --admin-url with --token-file)")
    with key_manager(args) as keys:
        yield keys


@key_store_command
def cmd_keys_create(args: argparse.Namespace) -> int:
    require_key_id(args.key_id, "--key-id")
    usage = USAGES.get(args.usage.upper().replace(" ", ""))
    if usage is None:
        raise ConfigError("--usage: one of ENCRYPT,DECRYPT | ENCRYPT | DECRYPT | NONE")
    with _key_actions(args) as keys:
        if args.origin == "external":
            keys.create_external(args.key_id, usage)
        else:
            keys.create(args.key_id, usage)
    print(f"created key {args.key_id} ({', '.join(sorted(usage)) or 'no usage'})")
    if args.origin == "external":
        print("it has no key material and is DISABLED until `keys import` (see import-parameters)")
    return 0


@key_store_command
def cmd_keys_list(args: argparse.Namespace) -> int:
    from xks_proxy.keymgmt.service import describe_key

    with _key_actions(args) as manager:
        rows = (
            manager.keys()
            if isinstance(manager, RemoteKeys)
            else [describe_key(record) for record in manager.keys()]  # noqa: SIM118 (a method)
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        usage = ",".join(row["keyUsage"]) or "NONE"
        deletion = f"  deletion {row['deletionDate']}" if row["deletionDate"] else ""
        imported = f"  {row['origin']}" if row.get("origin") == "external" else ""
        expiry = f"  valid to {row['validTo']}" if row.get("validTo") else ""
        print(
            f"{row['keyId']}  {row['keyStatus']}  {usage}  v{row['versions']}  "
            f"{row['createdAt'] or row['origin']}{deletion}{imported}{expiry}"
        )
    return 0


@key_store_command
def cmd_keys_enable(args: argparse.Namespace) -> int:
    with _key_actions(args) as keys:
        keys.enable(args.key_id)
    print(f"enabled key {args.key_id}")
    return 0


@key_store_command
def cmd_keys_disable(args: argparse.Namespace) -> int:
    with _key_actions(args) as keys:
        keys.disable(args.key_id)
    print(f"disabled key {args.key_id}")
    return 0


@key_store_command
def cmd_keys_rotate(args: argparse.Namespace) -> int:
    with _key_actions(args) as keys:
        version = keys.rotate(args.key_id)
    print(f"key {args.key_id} now encrypts with version {version}")
    return 0


@key_store_command
def cmd_keys_schedule_deletion(args: argparse.Namespace) -> int:
    if not MIN_DELETION_DAYS <= args.days <= MAX_DELETION_DAYS:
        raise ConfigError(f"--days: {MIN_DELETION_DAYS} to {MAX_DELETION_DAYS}")
    with _key_actions(args) as keys:
        when = keys.schedule_deletion(args.key_id, args.days)
    print(
        f"key {args.key_id} is DISABLED and will be deleted after "
        f"{when.isoformat(timespec='seconds')}; `keys cancel-deletion` until then"
    )
    return 0


@key_store_command
def cmd_keys_cancel_deletion(args: argparse.Namespace) -> int:
    with _key_actions(args) as keys:
        keys.cancel_deletion(args.key_id)
    print(f"deletion of key {args.key_id} cancelled; it stays DISABLED until `keys enable`")
    return 0


@key_store_command
def cmd_keys_import_parameters(args: argparse.Namespace) -> int:
    from xks_proxy.credentials import write_private_file

    out = Path(args.out)
    with _key_actions(args) as keys:
        parameters = keys.import_parameters(
            args.key_id, args.wrapping_algorithm, args.wrapping_key_spec
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "wrapping-key.pem").write_bytes(parameters.public_key_pem)
    write_private_file(out / "import-token", parameters.token + "\n")
    print(
        f"wrote {out / 'wrapping-key.pem'} and {out / 'import-token'}; wrap the 32 bytes of key "
        f"material with {args.wrapping_algorithm} before "
        f"{parameters.expires_at.isoformat(timespec='seconds')}"
    )
    return 0


def _read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise CommandError(f"cannot read {path}: {describe_os_error(error)}") from None


def _valid_to(text: str | None) -> datetime | None:
    from xks_proxy.keymgmt.byok import parse_valid_to

    return None if text is None else parse_valid_to(text, "--valid-to")


@key_store_command
def cmd_keys_import(args: argparse.Namespace) -> int:
    from xks_proxy.keymgmt.byok import ImportRefusedError

    valid_to = _valid_to(args.valid_to)
    wrapped = _read_file(args.material)
    try:
        token = _read_file(args.import_token).decode("ascii")
    except UnicodeDecodeError:
        raise CommandError(f"{args.import_token}: not an import token") from None
    try:
        with _key_actions(args) as keys:
            keys.import_material(args.key_id, wrapped, token, valid_to)
    except ImportRefusedError as error:
        raise CommandError(str(error)) from None
    until = f" until {valid_to.isoformat()}" if valid_to else ""
    print(f"imported key material into {args.key_id}; it is usable{until}")
    return 0


@key_store_command
def cmd_keys_delete_material(args: argparse.Namespace) -> int:
    with _key_actions(args) as keys:
        keys.delete_material(args.key_id)
    print(f"deleted the key material of {args.key_id}; it is DISABLED until the same is imported")
    return 0


def add_key_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], config_arg: ConfigArgument
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Register ``keys`` and its lifecycle actions; the ``keys`` actions, for the others."""
    keys = commands.add_parser(
        "keys", help="manage keys of the software key store (HSM keys: list and rotate)"
    )
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    key_actions: list[tuple[str, str, Command, bool]] = [
        ("create", "create a key", cmd_keys_create, True),
        ("list", "list keys", cmd_keys_list, False),
        ("enable", "enable a key", cmd_keys_enable, True),
        (
            "disable",
            "disable a key: GetKeyMetadata says DISABLED, crypto fails",
            cmd_keys_disable,
            True,
        ),
        ("rotate", "add a key version; new encryptions use it", cmd_keys_rotate, True),
        (
            "import-parameters",
            "write a wrapping public key and an import token for --origin external keys",
            cmd_keys_import_parameters,
            True,
        ),
        ("import", "import wrapped key material into an external key", cmd_keys_import, True),
        (
            "delete-material",
            "delete imported key material now (the key stays, DISABLED)",
            cmd_keys_delete_material,
            True,
        ),
        (
            "schedule-deletion",
            "disable a key now and delete it for good after 7-30 days",
            cmd_keys_schedule_deletion,
            True,
        ),
        (
            "cancel-deletion",
            "cancel a scheduled deletion (the key stays disabled)",
            cmd_keys_cancel_deletion,
            True,
        ),
    ]
    for action, help_text, func, needs_key in key_actions:
        sub = key_commands.add_parser(action, help=help_text)
        add_admin_url_options(sub)
        sub.add_argument("--backend", help="software backend name (default: the only one)")
        sub.add_argument(
            "--key-store", help="with --admin-url: key store name (default: the only one)"
        )
        if needs_key:
            sub.add_argument("--key-id", required=True)
        if action == "create":
            sub.add_argument(
                "--usage",
                default="ENCRYPT,DECRYPT",
                help="ENCRYPT,DECRYPT | ENCRYPT | DECRYPT | NONE",
            )
            sub.add_argument(
                "--origin",
                choices=("proxy", "external"),
                default="proxy",
                type=str.lower,
                help="external: no material until `keys import` (BYOK)",
            )
        if action == "import-parameters":
            sub.add_argument("--wrapping-algorithm", required=True, choices=WRAPPING_ALGORITHMS)
            sub.add_argument(
                "--wrapping-key-spec",
                choices=tuple(WRAPPING_KEY_BITS),
                default=DEFAULT_WRAPPING_KEY_SPEC,
                help=f"RSA wrapping key size (default {DEFAULT_WRAPPING_KEY_SPEC})",
            )
            sub.add_argument(
                "--out", required=True, help="directory for wrapping-key.pem and import-token"
            )
        if action == "import":
            sub.add_argument("--material", required=True, help="the wrapped key material")
            sub.add_argument("--import-token", required=True, help="the import-token file")
            sub.add_argument("--valid-to", help="ISO 8601 instant after which the key is unusable")
        if action == "list":
            sub.add_argument("--json", action="store_true")
        if action == "schedule-deletion":
            sub.add_argument(
                "--days",
                type=int,
                default=DEFAULT_DELETION_DAYS,
                help=f"waiting period, {MIN_DELETION_DAYS}-{MAX_DELETION_DAYS} days (default 30)",
            )
        sub.set_defaults(func=func)
    return key_commands
