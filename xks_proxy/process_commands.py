"""The commands that set up and drive a proxy process: ``init`` (scaffold a deployment),
``serve``, ``reload`` (SIGHUP), ``reopen-logs`` (SIGUSR1) and ``check-config``.

``serve`` exits 2 when start-up is refused (a port in use, another proxy on the pid file).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from xks_proxy.command_support import (
    ConfigArgument,
    command_config,
    key_store_command,
)
from xks_proxy.config import (
    NAME_PATTERN,
    REGION_PATTERN,
    Pkcs11BackendConfig,
    SoftwareBackendConfig,
    load_config,
    require_key_id,
)
from xks_proxy.errors import CommandError, ConfigError
from xks_proxy.keystore.records import KeyExistsError, KeyStoreUnavailableError

if TYPE_CHECKING:
    from xks_proxy.scaffold import Pkcs11Setup

ENV_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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
    config = command_config(args)
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


@key_store_command
def cmd_check_config(args: argparse.Namespace) -> int:
    config = command_config(args)
    config.check_serving()
    from xks_proxy import credential_service
    from xks_proxy.authz.load import load_authorizers  # cedarpy: only for the commands using it
    from xks_proxy.authz.stored import check_stored_policies
    from xks_proxy.keystore.store import open_key_database

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


def add_process_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], config_arg: ConfigArgument
) -> None:
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
