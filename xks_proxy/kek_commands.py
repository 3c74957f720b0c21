"""The KEK commands: ``keys rewrap`` (KEK rotation) and ``pkcs11 create-kek``.

``--new-kek`` and ``--kek`` take references only (``file:PATH``, ``env:NAME``, ``pkcs11:…``;
paths relative to the working directory): a key never travels in argv. ``keys rewrap`` prints
the ``kek`` line to put in the configuration, with ``file:`` made absolute.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xks_proxy.command_support import command_config, software_backend
from xks_proxy.errors import CommandError, ConfigError
from xks_proxy.kek_config import SCHEME, Kek, Pkcs11Kek, parse_kek_setting
from xks_proxy.keystore.records import KeyStateError

_REFERENCES = ("file:", "env:", SCHEME)


def _kek_reference(value: str, option: str) -> Kek:
    if not value.startswith(_REFERENCES):
        raise ConfigError(
            f"{option}: give file:PATH, env:NAME or pkcs11:... (never the key itself in argv)"
        )
    return parse_kek_setting(value, option, Path.cwd(), os.environ)


def _config_line(value: str) -> str:
    """The ``kek`` setting to write in the configuration for the reference ``value``."""
    if value.startswith("file:"):
        value = f"file:{(Path.cwd() / value.removeprefix('file:')).resolve()}"
    return f'kek = "{value}"'


def cmd_keys_rewrap(args: argparse.Namespace) -> int:
    from xks_proxy.keymgmt.audit import LifecycleAudit, local_actor
    from xks_proxy.keymgmt.rewrap import rewrap_kek
    from xks_proxy.keystore.sealing import describe_identity
    from xks_proxy.keystore.store import open_key_database

    config = command_config(args)
    backend = software_backend(config, args.backend)
    new_kek = _kek_reference(args.new_kek, "--new-kek")
    database = open_key_database(backend)
    try:
        result = rewrap_kek(database, new_kek, LifecycleAudit(config.audit), local_actor())
    except KeyStateError as error:
        raise CommandError(str(error)) from None
    finally:
        database.close()
    print(
        f"resealed {result.versions} key versions and {result.secrets} store secrets of "
        f"{database.location.display} under {describe_identity(result.new_identity)} "
        f"(was {describe_identity(result.old_identity)})"
    )
    print(f"now set in [backends.{backend.name}] of {config.path}:")
    print(f"    {_config_line(args.new_kek)}")
    print(
        "and restart every proxy that uses this key store with it"
        + (" (and its pin-source)" if isinstance(new_kek, Pkcs11Kek) else "")
        + "; until then they serve the keys in memory and report DEGRADED"
    )
    return 0


def cmd_pkcs11_create_kek(args: argparse.Namespace) -> int:
    from xks_proxy.keystore.hsm_kek import HsmKeySealer, create_kek

    if bool(args.kek) == bool(args.config):
        raise ConfigError("give --kek pkcs11:... or --config (its software backend's kek)")
    kek = (
        _kek_reference(args.kek, "--kek")
        if args.kek
        else software_backend(command_config(args), args.backend).kek
    )
    if not isinstance(kek, Pkcs11Kek):
        raise ConfigError("the kek is not a pkcs11: URI; nothing to create in a token")
    try:
        create_kek(kek)
    except FileExistsError:
        raise CommandError(f"{kek}: the token already has a key with that label") from None
    sealer = HsmKeySealer(kek, "-")
    try:
        value = sealer.check_value()
    finally:
        sealer.close()
    print(f"created {kek}: AES-256, non-extractable, wrap/unwrap only; check value {value}")
    return 0


def add_kek_commands(
    key_commands: Any, hsm_commands: Any, config_arg: Callable[[argparse.ArgumentParser], None]
) -> None:
    rewrap = key_commands.add_parser(
        "rewrap", help="reseal every key version under a new key-encryption key (KEK rotation)"
    )
    config_arg(rewrap)
    rewrap.add_argument("--backend", help="software backend name (default: the only one)")
    rewrap.add_argument(
        "--new-kek", required=True, help="file:PATH | env:NAME (Base64, 32 bytes) | pkcs11:URI"
    )
    rewrap.set_defaults(func=cmd_keys_rewrap)

    create = hsm_commands.add_parser(
        "create-kek", help="generate a non-extractable AES-256 KEK (wrap/unwrap) on a token"
    )
    create.add_argument(
        "--kek", help="pkcs11:token=...;object=LABEL?module-path=...&pin-source=env:NAME"
    )
    create.add_argument("--config", help="or: the configuration whose software backend names it")
    create.add_argument("--backend", help="software backend name (default: the only one)")
    create.set_defaults(func=cmd_pkcs11_create_kek)
