"""What the ``xks-proxy`` command modules share: the configuration a command names, the
software backend it acts on, the guard that turns an unreachable key store into exit 1, the
usage spellings and the one line that describes an OS error.

It imports no command module and nothing heavy: every command module builds on it, and
``cli.py`` imports it to explain a failure.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from pathlib import Path

from xks_proxy.backends.base import DECRYPT, ENCRYPT
from xks_proxy.config import Config, Pkcs11BackendConfig, SoftwareBackendConfig, load_config
from xks_proxy.errors import CommandError, ConfigError
from xks_proxy.keymgmt.limits import HSM_KEYS_HINT
from xks_proxy.keystore.records import KeyStoreUnavailableError

Command = Callable[[argparse.Namespace], int]
ConfigArgument = Callable[[argparse.ArgumentParser], None]

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


def command_config(args: argparse.Namespace) -> Config:
    return load_config(Path(args.config))


def has_hsm_backend(config: Config) -> bool:
    return any(isinstance(b, Pkcs11BackendConfig) for b in config.backends.values())


def software_backend(config: Config, name: str | None) -> SoftwareBackendConfig:
    backends = [b for b in config.backends.values() if isinstance(b, SoftwareBackendConfig)]
    if name is not None:
        backends = [b for b in backends if b.name == name]
    if len(backends) == 1:
        return backends[0]
    if backends:
        raise ConfigError("name the software backend with --backend")
    if name is None and has_hsm_backend(config):
        raise CommandError(
            f"`keys` manages the embedded software key store and this configuration has "
            f"none. {HSM_KEYS_HINT}."
        )
    raise ConfigError("no such software backend in the configuration")


def key_store_command(command: Command) -> Command:
    """A ``keys`` command: an unreachable store is exit status 1 with the store's reason."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except KeyStoreUnavailableError as error:
            raise CommandError(f"{error} (a shared store must be up for key management)") from None

    return run
