"""The commands that face AWS KMS: ``kms-config`` (what the KMS console is given),
``kms-emulator`` (a local KMS whose external key stores call XKS proxies) and ``loadtest``
(traffic as KMS sends it, to a proxy or through the emulator).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from pathlib import Path

from xks_proxy.command_support import ConfigArgument
from xks_proxy.config import load_config
from xks_proxy.errors import CommandError, ConfigError
from xks_proxy.loadtest.arguments import DESCRIPTION, add_arguments


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


def add_kms_emulator_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def add_loadtest_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    load = commands.add_parser(
        "loadtest", help="open-loop load test of an XKS proxy (signed requests, latency report)"
    )
    load.description = DESCRIPTION
    add_arguments(load)
    load.set_defaults(func=cmd_loadtest)


def add_kms_config_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], config_arg: ConfigArgument
) -> None:
    kms = commands.add_parser(
        "kms-config", help="print the proxy configuration file for the KMS console"
    )
    config_arg(kms)
    kms.add_argument("--key-store", help="key store name or URI path (default: the only one)")
    kms.add_argument("--access-key-id", help="which credential (default: the newest)")
    kms.set_defaults(func=cmd_kms_config)
