"""The ``xks-proxy`` command line.

Exit codes: 0 success, 1 a command that could not do what was asked (unknown key, …), 2 bad
configuration or usage.

An operating-system or database failure (a full disk, a read-only or missing directory, a
permission refused, a locked or corrupt SQLite file) ends any command with exit 1 and one line
naming what failed and where, never a traceback: operators run these commands from scripts and
read the last line. The line carries the OS's reason and the file name, never file contents.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import signal
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from xks_proxy import __version__, credential_service
from xks_proxy.admin.client import AdminClient, RemoteKeys, add_admin_url_options
from xks_proxy.admin.token_command import add_admin_commands
from xks_proxy.backends.base import DECRYPT, ENCRYPT
from xks_proxy.config import (
    NAME_PATTERN,
    REGION_PATTERN,
    Config,
    Pkcs11BackendConfig,
    SoftwareBackendConfig,
    TokenSelector,
    load_config,
    require_key_id,
    resolve_secret,
)
from xks_proxy.credential_commands import add_credential_commands
from xks_proxy.errors import CommandError, ConfigError
from xks_proxy.kek_commands import add_kek_commands
from xks_proxy.keymgmt.byok import (
    DEFAULT_WRAPPING_KEY_SPEC,
    WRAPPING_ALGORITHMS,
    WRAPPING_KEY_BITS,
    ImportRefusedError,
    parse_valid_to,
)
from xks_proxy.keymgmt.hsm import open_lifecycle_keys
from xks_proxy.keymgmt.service import (
    DEFAULT_DELETION_DAYS,
    HSM_KEYS_HINT,
    MAX_DELETION_DAYS,
    MIN_DELETION_DAYS,
    KeyManager,
    describe_key,
)
from xks_proxy.keystore.location import StoreLocation
from xks_proxy.keystore.store import (
    KeyDatabase,
    KeyExistsError,
    KeyStateError,
    KeyStoreUnavailableError,
    UnknownKeyError,
    open_key_database,
)
from xks_proxy.policy_commands import add_policy_commands

if TYPE_CHECKING:
    from xks_proxy.scaffold import Pkcs11Setup

ENV_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
USAGES = {
    "ENCRYPT,DECRYPT": frozenset({ENCRYPT, DECRYPT}),
    "DECRYPT,ENCRYPT": frozenset({ENCRYPT, DECRYPT}),
    "ENCRYPT": frozenset({ENCRYPT}),
    "DECRYPT": frozenset({DECRYPT}),
    "NONE": frozenset(),
}


def describe_os_error(error: OSError) -> str:
    """One line for an OS error: what failed and on which file, e.g. for a full disk."""
    reason = error.strerror or type(error).__name__
    names = [str(name) for name in (error.filename, error.filename2) if name is not None]
    return f"{reason}: {' -> '.join(names)}" if names else reason


def _config(args: argparse.Namespace) -> Config:
    return load_config(Path(args.config))


def _has_hsm_backend(config: Config) -> bool:
    return any(isinstance(b, Pkcs11BackendConfig) for b in config.backends.values())


def _software_backend(config: Config, name: str | None) -> SoftwareBackendConfig:
    backends = [b for b in config.backends.values() if isinstance(b, SoftwareBackendConfig)]
    if name is not None:
        backends = [b for b in backends if b.name == name]
    if len(backends) == 1:
        return backends[0]
    if backends:
        raise ConfigError("name the software backend with --backend")
    if name is None and _has_hsm_backend(config):
        raise CommandError(
            f"`keys` manages the embedded software key store and this configuration has "
            f"none. {HSM_KEYS_HINT}."
        )
    raise ConfigError("no such software backend in the configuration")


def _key_store_command(
    command: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """A ``keys`` command: an unreachable store is exit status 1 with the store's reason."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except KeyStoreUnavailableError as error:
            raise CommandError(f"{error} (a shared store must be up for key management)") from None

    return run


def _pkcs11_setup(args: argparse.Namespace) -> Pkcs11Setup | None:
    from xks_proxy.scaffold import Pkcs11Setup

    hsm_options = {"--module": args.module, "--token-label": args.token_label,
                   "--pin-env": args.pin_env}  # fmt: skip
    if args.backend == "software":
        given = [option for option, value in hsm_options.items() if value]
        if args.kek and not args.kek.startswith("pkcs11:"):
            raise ConfigError("--kek: a pkcs11: URI (without it init writes a file KEK)")
        if given:
            raise ConfigError(f"{given[0]}: only with --backend pkcs11")
        return None
    if args.database_url or args.kek:
        option = "--database-url" if args.database_url else "--kek"
        raise ConfigError(f"{option}: only with --backend software (HSM keys stay on the token)")
    missing = [option for option, value in hsm_options.items() if not value]
    if missing:
        raise ConfigError(f"--backend pkcs11 needs {', '.join(missing)}")
    if not ENV_NAME_PATTERN.fullmatch(args.pin_env):
        raise ConfigError("--pin-env: the name of an environment variable, e.g. XKS_HSM_PIN")
    return Pkcs11Setup(Path(args.module), args.token_label, args.pin_env)


def cmd_init(args: argparse.Namespace) -> int:
    from xks_proxy.scaffold import AlreadyInitialisedError, scaffold

    if not NAME_PATTERN.fullmatch(args.name):
        raise ConfigError("--name: 1-64 characters of A-Z a-z 0-9 . _ -")
    if not REGION_PATTERN.fullmatch(args.region):
        raise ConfigError("--region: not an AWS region name like us-east-1")
    if args.key_id is not None:
        require_key_id(args.key_id, "--key-id")
    try:
        made = scaffold(
            Path(args.directory),
            name=args.name,
            region=args.region,
            key_id=args.key_id,
            port=args.port,
            metrics_port=args.metrics_port,
            admin_port=args.admin_port,
            force=args.force,
            tls=args.tls,
            hsm=_pkcs11_setup(args),
            database_url=args.database_url,
            kek=args.kek,
        )
    except (AlreadyInitialisedError, KeyStoreUnavailableError, KeyExistsError) as error:
        raise CommandError(str(error)) from None
    print(f"configuration      {made.config_path}")
    print(f"keys               {made.key_location}, key {made.key_id} (ENCRYPT, DECRYPT)")
    print(f"credentials        {made.credentials_path} (0600), access key id {made.access_key_id}")
    print(f"XKS key store      {made.key_store} at URI path {made.uri_path}")
    if made.tls:
        print(f"TLS                {made.config_path.parent / 'tls'} (self-signed, development)")
    print(f"admin API          loopback; token: xks-proxy admin token --config "
          f"{made.config_path} --role viewer")  # fmt: skip
    print(f"next: xks-proxy serve --config {made.config_path}")
    print(f"      xks-proxy kms-config --config {made.config_path}  (for the KMS console)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from xks_proxy.web.lifecycle import StartRefusedError
    from xks_proxy.web.pidfile import AlreadyRunningError
    from xks_proxy.web.server import ServeOptions, serve
    from xks_proxy.web.supervisor import Supervisor

    role = "worker " if args.worker else ""
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s {role}%(process)d %(name)s: %(message)s",
    )
    config = _config(args)
    options = ServeOptions(host=args.host, port=args.port, worker=args.worker)
    workers = args.workers or config.server.workers
    try:
        if workers > 1 and not args.worker:
            asyncio.run(Supervisor(config, options, workers).run())
        else:
            asyncio.run(serve(config, options))
    except (StartRefusedError, AlreadyRunningError) as refused:
        print(f"xks-proxy: {refused}", file=sys.stderr)
        return 2
    return 0


def cmd_reopen_logs(args: argparse.Namespace) -> int:
    from xks_proxy.web.lifecycle import reopen_logs
    from xks_proxy.web.pidfile import NotRunningError

    try:
        pid = reopen_logs(load_config(Path(args.config), with_backends=False))
    except NotRunningError as error:
        raise CommandError(str(error)) from None
    print(f"xks-proxy (pid {pid}) reopened its audit log")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    from xks_proxy.web.pidfile import NotRunningError, running_pid

    config = load_config(Path(args.config), with_backends=False)
    try:
        # Only a pid whose file is locked is a running proxy: never signal a stale one.
        pid = running_pid(config.pid_path)
        os.kill(pid, signal.SIGHUP)
    except (OSError, NotRunningError) as error:
        raise CommandError(f"cannot signal the proxy through {config.pid_path}: {error}") from None
    print(f"asked xks-proxy (pid {pid}) to reload {config.path}; its log says how it went")
    return 0


@_key_store_command
def cmd_check_config(args: argparse.Namespace) -> int:
    config = _config(args)
    config.check_serving()
    from xks_proxy.authz.load import load_authorizers  # cedarpy: only for the commands using it
    from xks_proxy.authz.stored import check_stored_policies

    load_authorizers(config)  # parses every key store's authorization_policy file
    for backend in config.backends.values():
        if isinstance(backend, SoftwareBackendConfig):
            # Opening the store proves the KEK decrypts every key in it.
            database = open_key_database(backend)
            try:
                database.load()
            finally:
                database.close()
        else:
            # Opening an HSM backend proves the module, token, PIN and health key.
            asyncio.run(_open_and_close(backend))
    credentials = credential_service.check_stored(config)
    # Policies kept in the store (authorization_policy = "database"), parsed as start-up does.
    policies = check_stored_policies(config)
    for store in config.key_stores:
        print(
            f"key store {store.name}: {store.uri_path}, region {store.region}, "
            f"backend {store.backend}, {credentials[store.name]} credential(s)"
        )
    for line in policies:
        print(line)
    print(f"{config.path}: ok")
    return 0


async def _open_and_close(config: Pkcs11BackendConfig) -> None:
    from xks_proxy.backends import create_backend

    backend = create_backend(config)
    await backend.open()
    await backend.close()


@contextlib.contextmanager
def _key_manager(args: argparse.Namespace) -> Iterator[KeyManager]:
    """The key lifecycle service over the configured store; store refusals become exit 1."""
    from xks_proxy.keymgmt.audit import LifecycleAudit, local_actor

    config = _config(args)
    database = open_lifecycle_keys(config, args.backend)
    try:
        yield KeyManager(database, LifecycleAudit(config.audit), local_actor())
    except UnknownKeyError:
        if isinstance(database, KeyDatabase):
            hint = f" ({HSM_KEYS_HINT})" if _has_hsm_backend(config) else ""
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
    with _key_manager(args) as keys:
        yield keys


@_key_store_command
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


@_key_store_command
def cmd_keys_list(args: argparse.Namespace) -> int:
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


@_key_store_command
def cmd_keys_enable(args: argparse.Namespace) -> int:
    with _key_actions(args) as keys:
        keys.enable(args.key_id)
    print(f"enabled key {args.key_id}")
    return 0


@_key_store_command
def cmd_keys_disable(args: argparse.Namespace) -> int:
    with _key_actions(args) as keys:
        keys.disable(args.key_id)
    print(f"disabled key {args.key_id}")
    return 0


@_key_store_command
def cmd_keys_rotate(args: argparse.Namespace) -> int:
    with _key_actions(args) as keys:
        version = keys.rotate(args.key_id)
    print(f"key {args.key_id} now encrypts with version {version}")
    return 0


@_key_store_command
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


@_key_store_command
def cmd_keys_cancel_deletion(args: argparse.Namespace) -> int:
    with _key_actions(args) as keys:
        keys.cancel_deletion(args.key_id)
    print(f"deletion of key {args.key_id} cancelled; it stays DISABLED until `keys enable`")
    return 0


@_key_store_command
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
    return None if text is None else parse_valid_to(text, "--valid-to")


@_key_store_command
def cmd_keys_import(args: argparse.Namespace) -> int:
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


@_key_store_command
def cmd_keys_delete_material(args: argparse.Namespace) -> int:
    with _key_actions(args) as keys:
        keys.delete_material(args.key_id)
    print(f"deleted the key material of {args.key_id}; it is DISABLED until the same is imported")
    return 0


def _passphrase(args: argparse.Namespace) -> str:
    """From the environment variable named by --passphrase-env: never argv, never a file."""
    passphrase = os.environ.get(args.passphrase_env)
    if not passphrase:
        raise ConfigError(
            f"--passphrase-env: environment variable {args.passphrase_env} is not set"
        )
    return passphrase


@_key_store_command
def cmd_keys_backup(args: argparse.Namespace) -> int:
    from xks_proxy.credentials import write_private_file
    from xks_proxy.keymgmt.backup import BackupError

    passphrase = _passphrase(args)
    try:
        with _key_manager(args) as keys:
            document, count, credentials = keys.backup(passphrase)
    except BackupError as error:
        raise CommandError(str(error)) from None
    write_private_file(Path(args.out), document)
    print(
        f"backed up {count} keys and {credentials} stored credentials to {args.out} (0600); "
        "keep the passphrase apart from it"
    )
    return 0


@_key_store_command
def cmd_keys_restore(args: argparse.Namespace) -> int:
    from xks_proxy.keymgmt.backup import BackupError

    passphrase = _passphrase(args)
    try:
        document = Path(args.input).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise CommandError(f"cannot read {args.input}: {error}") from None
    try:
        with _key_manager(args) as keys:
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


@_key_store_command
def cmd_keys_migrate(args: argparse.Namespace) -> int:
    from xks_proxy.keymgmt.audit import LifecycleAudit, local_actor
    from xks_proxy.keymgmt.migrate import migrate_keys

    source_location = _store_argument(args.source, "--from")
    destination_location = _store_argument(args.destination, "--to")
    if source_location == destination_location:
        raise ConfigError("--from and --to name the same store")
    config = _config(args) if args.config else None
    kek = _software_backend(config, args.backend).kek if config is not None else None
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


def _pkcs11_backend(config: Config, name: str | None) -> Pkcs11BackendConfig:
    backends = [
        b
        for b in config.backends.values()
        if isinstance(b, Pkcs11BackendConfig) and name in (None, b.name)
    ]
    if len(backends) != 1:
        raise ConfigError(
            "name the pkcs11 backend with --backend" if backends else "no such pkcs11 backend"
        )
    return backends[0]


def _token_selector(backend: Pkcs11BackendConfig, label: str | None) -> TokenSelector:
    return TokenSelector(label=label) if label else backend.tokens[0]


def cmd_pkcs11_create_key(args: argparse.Namespace) -> int:
    from xks_proxy.pkcs11_admin import create_key

    backend = _pkcs11_backend(_config(args), args.backend)
    label = args.label or (backend.health_key_label if args.health else None)
    if label is None:
        raise ConfigError("--label: 1-128 characters of A-Z a-z 0-9 . _ - (or --health)")
    if not args.health:
        require_key_id(label, "--label")
    usage = USAGES.get(args.usage.upper().replace(" ", ""))
    if usage is None:
        raise ConfigError("--usage: one of ENCRYPT,DECRYPT | ENCRYPT | DECRYPT | NONE")
    selector = _token_selector(backend, args.token)
    try:
        create_key(backend, selector, label, usage)
    except FileExistsError:
        raise CommandError(f"the token already has a key labelled {label}") from None
    print(f"created AES-256 key {label} ({', '.join(sorted(usage)) or 'no usage'}) on {selector}")
    return 0


def cmd_pkcs11_list_keys(args: argparse.Namespace) -> int:
    from xks_proxy.pkcs11_admin import list_keys

    backend = _pkcs11_backend(_config(args), args.backend)
    for key in list_keys(backend, _token_selector(backend, args.token)):
        print(f"{key.label}  {key.key_type}-{key.bits}  {','.join(key.usage) or 'NONE'}")
    return 0


def cmd_kms_config(args: argparse.Namespace) -> int:
    config = load_config(Path(args.config), with_backends=False)
    store = config.key_store(args.key_store)
    if not store.credentials:
        raise CommandError(f"key store {store.name} has no credential")
    credential = store.credentials[-1]
    if args.access_key_id:
        matches = [c for c in store.credentials if c.access_key_id == args.access_key_id]
        if not matches:
            raise CommandError(f"key store {store.name} has no credential {args.access_key_id}")
        credential = matches[0]
    # XKS spec §6.2: the proxy configuration file the KMS console accepts.
    document = {
        "XksProxyUriPath": store.uri_path,
        "XksProxyAuthenticationCredential": {
            "AccessKeyId": credential.access_key_id,
            "RawSecretAccessKey": credential.secret_access_key,
        },
    }
    print(json.dumps(document, indent=2))
    return 0


def cmd_kms_emulator(args: argparse.Namespace) -> int:
    from aiohttp import web

    from xks_proxy.kms_emulator.server import apply_seed, create_app
    from xks_proxy.kms_emulator.service import KmsEmulator
    from xks_proxy.kms_emulator.state import State
    from xks_proxy.kms_emulator.xks_client import XksClient

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s kms-emulator %(name)s: %(message)s"
    )

    async def run() -> None:
        import ssl

        context = ssl.create_default_context(cafile=args.cacert) if args.cacert else None
        emulator = KmsEmulator(
            State(Path(args.db) if args.db else None),
            XksClient(args.xks_timeout_ms / 1000, context),
            account=args.account_id, strict=args.strict, xks_rate=args.xks_rate,
            event_log=Path(args.event_log) if args.event_log else None,
        )  # fmt: skip
        if args.seed:
            await apply_seed(emulator, Path(args.seed), args.region)
        runner = web.AppRunner(create_app(emulator), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, args.host, args.port).start()
        host, port, *_ = runner.addresses[0]
        logging.getLogger("xks_proxy.kms_emulator").info(
            "KMS emulator on http://%s:%d (state in %s)", host, port, args.db or "memory"
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(run())
    return 0


def cmd_loadtest(args: argparse.Namespace) -> int:
    from xks_proxy.loadtest.command import main as loadtest

    try:
        return loadtest(args)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xks-proxy", description="AWS KMS External Key Store (XKS) proxy."
    )
    parser.add_argument("--version", action="version", version=f"xks-proxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", required=True, help="the xks-proxy.toml file")

    init = commands.add_parser("init", help="scaffold a ready-to-run deployment in DIR")
    init.add_argument("directory", metavar="DIR")
    init.add_argument("--name", default="dev", help="key store name, used in its URI path")
    init.add_argument("--region", default="us-east-1", help="the key store's AWS region")
    init.add_argument("--key-id", help="id of the first key (default: a random UUID)")
    init.add_argument("--port", type=int, default=8080)
    init.add_argument("--metrics-port", type=int, default=9464)
    init.add_argument("--admin-port", type=int, default=9443, help="the admin API (loopback)")
    init.add_argument("--force", action="store_true", help="overwrite an existing deployment")
    init.add_argument("--tls", action="store_true", help="add a self-signed dev certificate")
    init.add_argument(
        "--backend", choices=("software", "pkcs11"), default="software", help="where keys live"
    )
    init.add_argument("--module", help="pkcs11: the PKCS#11 library (.so)")
    init.add_argument("--token-label", help="pkcs11: the token's label")
    init.add_argument("--pin-env", help="pkcs11: environment variable holding the user PIN")
    init.add_argument(
        "--database-url",
        help="keys in a shared PostgreSQL store: postgresql://... or env:NAME (default: keys.db)",
    )
    init.add_argument(
        "--kek",
        help="software: seal the keys under an AES key in a PKCS#11 token (pkcs11:URI, made if "
        "missing) instead of a kek.key file",
    )
    init.set_defaults(func=cmd_init)

    serve = commands.add_parser("serve", help="run the proxy")
    config_arg(serve)
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument("--workers", type=int, help="override server.workers (processes)")
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    reload = commands.add_parser(
        "reload", help="make a running proxy re-read its configuration (sends SIGHUP)"
    )
    config_arg(reload)
    reload.set_defaults(func=cmd_reload)

    reopen = commands.add_parser(
        "reopen-logs", help="make a running proxy reopen its audit log (sends SIGUSR1)"
    )
    config_arg(reopen)
    reopen.set_defaults(func=cmd_reopen_logs)

    check = commands.add_parser("check-config", help="validate a configuration and its key stores")
    config_arg(check)
    check.set_defaults(func=cmd_check_config)

    keys = commands.add_parser(
        "keys", help="manage keys of the software key store (HSM keys: list and rotate)"
    )
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    key_actions: list[tuple[str, str, Callable[[argparse.Namespace], int], bool]] = [
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

    add_credential_commands(commands, config_arg)
    add_admin_commands(commands, config_arg)
    add_policy_commands(commands)

    emulator = commands.add_parser(
        "kms-emulator", help="run a local AWS KMS whose external key stores call XKS proxies"
    )
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=4599)
    emulator.add_argument("--db", help="SQLite file for keys and key stores (default: memory)")
    emulator.add_argument("--seed", help="JSON file of key stores, keys and aliases to create")
    emulator.add_argument("--region", default="us-east-1", help="region of seeded resources")
    emulator.add_argument("--account-id", default="111122223333")
    emulator.add_argument(
        "--strict",
        action="store_true",
        help="refuse proxy endpoints AWS would refuse (http://, ports)",
    )
    emulator.add_argument(
        "--xks-timeout-ms", type=int, default=250, help="per proxy call, as AWS KMS (default 250)"
    )
    emulator.add_argument(
        "--xks-rate",
        type=float,
        default=1800,
        help="requests/s per external key store before ThrottlingException",
    )
    emulator.add_argument("--cacert", help="CA bundle for https:// proxies")
    emulator.add_argument(
        "--event-log", help="append one CloudTrail-format JSON record per KMS call to this file"
    )
    emulator.set_defaults(func=cmd_kms_emulator)

    load = commands.add_parser(
        "loadtest", help="open-loop load test of an XKS proxy (signed requests, latency report)"
    )
    from xks_proxy.loadtest.command import DESCRIPTION, add_arguments

    load.description = DESCRIPTION
    add_arguments(load)
    load.set_defaults(func=cmd_loadtest)

    hsm = commands.add_parser("pkcs11", help="provision keys (and KEKs) on a PKCS#11 token")
    hsm_commands = hsm.add_subparsers(dest="pkcs11_command", required=True, metavar="ACTION")
    create = hsm_commands.add_parser("create-key", help="generate an AES-256 key on the token")
    listing = hsm_commands.add_parser("list-keys", help="list the token's secret keys")
    for sub in (create, listing):
        config_arg(sub)
        sub.add_argument("--backend", help="pkcs11 backend name (default: the only one)")
        sub.add_argument("--token", help="token label (default: the backend's first token)")
    create.add_argument("--label", help="the key id (CKA_LABEL and CKA_ID)")
    create.add_argument(
        "--usage", default="ENCRYPT,DECRYPT", help="ENCRYPT,DECRYPT | ENCRYPT | DECRYPT | NONE"
    )
    create.add_argument(
        "--health", action="store_true", help="create the backend's health-check key"
    )
    create.set_defaults(func=cmd_pkcs11_create_key)
    listing.set_defaults(func=cmd_pkcs11_list_keys)
    add_kek_commands(key_commands, hsm_commands, config_arg)

    kms = commands.add_parser(
        "kms-config", help="print the proxy configuration file for the KMS console"
    )
    config_arg(kms)
    kms.add_argument("--key-store", help="key store name or URI path (default: the only one)")
    kms.add_argument("--access-key-id", help="which credential (default: the newest)")
    kms.set_defaults(func=cmd_kms_config)
    return parser


def _command_name(args: argparse.Namespace) -> str:
    """``keys create``, ``serve``…: how the failing command is named in a one-line error."""
    words = [args.command]
    words += [
        value
        for attribute, value in vars(args).items()
        if attribute.endswith("_command") and isinstance(value, str)
    ]
    return " ".join(words)


def _explain_failure(args: argparse.Namespace, error: Exception) -> tuple[int, str]:
    """The exit status and the one line a failed command prints."""
    command = _command_name(args)
    if isinstance(error, KeyStoreUnavailableError):
        return 1, f"{command}: {error}"
    if isinstance(error, ConfigError):
        return 2, f"configuration error: {error}"
    if isinstance(error, OSError):
        return 1, f"{command}: {describe_os_error(error)}"
    if isinstance(error, sqlite3.Error):
        # SQLite reports a full disk or a read-only file as its own error, not an OSError.
        return 1, f"{command}: key store: {error}"
    return 1, str(error)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ConfigError, CommandError, OSError, sqlite3.Error) as error:
        status, message = _explain_failure(args, error)
        print(f"xks-proxy: {message}", file=sys.stderr)
        return status
    return result
