"""``xks-proxy pkcs11 create-key`` and ``pkcs11 list-keys``: keys on a PKCS#11 token of a
configured pkcs11 backend (``pkcs11 create-kek`` is in ``kek_commands.py``).
"""

from __future__ import annotations

import argparse

from xks_proxy.command_support import USAGES, ConfigArgument, command_config
from xks_proxy.config import Config, Pkcs11BackendConfig, TokenSelector, require_key_id
from xks_proxy.errors import CommandError, ConfigError


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

    backend = _pkcs11_backend(command_config(args), args.backend)
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

    backend = _pkcs11_backend(command_config(args), args.backend)
    for key in list_keys(backend, _token_selector(backend, args.token)):
        print(f"{key.label}  {key.key_type}-{key.bits}  {','.join(key.usage) or 'NONE'}")
    return 0


def add_pkcs11_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], config_arg: ConfigArgument
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Register ``pkcs11`` and its key actions; the ``pkcs11`` actions, for the others."""
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
    return hsm_commands
