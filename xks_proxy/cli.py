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
import sqlite3
import sys
from collections.abc import Sequence

from xks_proxy import __version__
from xks_proxy.admin.token_command import add_admin_commands
from xks_proxy.command_support import describe_os_error
from xks_proxy.credential_commands import add_credential_commands
from xks_proxy.errors import CommandError, ConfigError
from xks_proxy.kek_commands import add_kek_commands
from xks_proxy.key_backup_commands import add_key_backup_commands
from xks_proxy.key_commands import add_key_commands
from xks_proxy.keystore.records import KeyStoreUnavailableError
from xks_proxy.kms_commands import (
    add_kms_config_command,
    add_kms_emulator_command,
    add_loadtest_command,
)
from xks_proxy.pkcs11_commands import add_pkcs11_commands
from xks_proxy.policy_commands import add_policy_commands
from xks_proxy.process_commands import add_process_commands


def build_parser() -> argparse.ArgumentParser:
    """Every command, registered in the order ``xks-proxy --help`` lists them."""
    parser = argparse.ArgumentParser(
        prog="xks-proxy", description="AWS KMS External Key Store (XKS) proxy."
    )
    parser.add_argument("--version", action="version", version=f"xks-proxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", required=True, help="the xks-proxy.toml file")

    add_process_commands(commands, config_arg)
    key_commands = add_key_commands(commands, config_arg)
    add_key_backup_commands(key_commands, config_arg)
    add_credential_commands(commands, config_arg)
    add_admin_commands(commands, config_arg)
    add_policy_commands(commands)
    add_kms_emulator_command(commands)
    add_loadtest_command(commands)
    hsm_commands = add_pkcs11_commands(commands, config_arg)
    add_kek_commands(key_commands, hsm_commands, config_arg)
    add_kms_config_command(commands, config_arg)
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
