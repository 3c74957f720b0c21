"""A throw-away SoftHSM2 installation for the tests: its own config file and token directory,
tokens made with ``softhsm2-util``, keys made with python-pkcs11."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pkcs11 import Attribute, KeyType, Mechanism

from xks_proxy.backends import pkcs11_library
from xks_proxy.config import Pkcs11BackendConfig, TokenSelector
from xks_proxy.pkcs11_admin import create_key

MODULE_CANDIDATES = (
    Path("/usr/lib/softhsm/libsofthsm2.so"),
    Path("/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"),
    Path("/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so"),
)
USER_PIN = "7391-test-pin"
SO_PIN = "5528-so-pin"
HEALTH_LABEL = "xks-proxy-health"


def find_module() -> Path:
    for candidate in MODULE_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise RuntimeError("SoftHSM2 is not installed: run `make test`, which installs it")


@dataclass
class SoftHsm:
    directory: Path
    module: Path

    @property
    def conf(self) -> Path:
        return self.directory / "softhsm2.conf"

    @property
    def token_dir(self) -> Path:
        return self.directory / "tokens"

    def init_token(self, label: str) -> None:
        subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", label,
             "--so-pin", SO_PIN, "--pin", USER_PIN],
            check=True, capture_output=True, env={**os.environ, "SOFTHSM2_CONF": str(self.conf)},
        )  # fmt: skip

    def remove_token(self) -> Path:
        """Take the (only) token away as an unplugged device would go; returns where it went."""
        (token,) = [path for path in self.token_dir.iterdir() if path.is_dir()]
        # Out of the token directory: SoftHSM loads every folder in it as a token.
        away = self.directory / f"removed-{token.name}"
        token.rename(away)
        return away

    def restore_token(self, away: Path) -> None:
        away.rename(self.token_dir / away.name.removeprefix("removed-"))

    def backend_config(self, label: str, **changes: object) -> Pkcs11BackendConfig:
        values: dict[str, object] = {
            "name": "hsm",
            "module": self.module,
            "tokens": (TokenSelector(label=label),),
            "user_pin": USER_PIN,
        }
        values.update(changes)
        return Pkcs11BackendConfig(**values)  # type: ignore[arg-type]

    def toml(self, label: str, **settings: object) -> str:
        """A ``[backends.hsm]`` table for this token."""
        lines = [
            "[backends.hsm]",
            'type = "pkcs11"',
            f'module = "{self.module}"',
            f'user_pin = "{USER_PIN}"',
            f'tokens = [{{label = "{label}"}}]',
        ]
        lines += [f"{key} = {_toml_value(value)}" for key, value in settings.items()]
        return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value).replace("'", '"')


def make_softhsm(directory: Path) -> SoftHsm:
    hsm = SoftHsm(directory, find_module())
    hsm.token_dir.mkdir(parents=True)
    hsm.conf.write_text(
        f"directories.tokendir = {hsm.token_dir}\nobjectstore.backend = file\n"
        "log.level = ERROR\nslots.removable = false\n"
    )
    return hsm


def provision_conformance_token(hsm: SoftHsm, label: str) -> None:
    """The keys the shared API suite expects (see tests/conftest.py), plus an RSA key."""
    config = hsm.backend_config(label)
    selector = config.tokens[0]
    both = frozenset({"ENCRYPT", "DECRYPT"})
    for key_label, usage in (
        (HEALTH_LABEL, both),
        ("key-both", both),
        ("key-encrypt-only", frozenset({"ENCRYPT"})),
        ("key-decrypt-only", frozenset({"DECRYPT"})),
        ("key-no-usage", frozenset()),
        ("key-disabled", both),
        ("other-key", both),
    ):
        create_key(config, selector, key_label, usage)
    library = pkcs11_library.load(hsm.module)
    with library.get_token(token_label=label).open(rw=True, user_pin=USER_PIN) as session:
        session.generate_key(
            KeyType.AES, 256, label="key-with-sign", store=True,
            template={Attribute.SIGN: True, Attribute.VERIFY: True, Attribute.WRAP: False,
                      Attribute.UNWRAP: False, Attribute.DERIVE: False},
        )  # fmt: skip
        session.generate_key(KeyType.AES, 128, label="key-aes-128", store=True)
        session.generate_keypair(
            KeyType.RSA, 2048, label="key-rsa", store=True,
            mechanism=Mechanism.RSA_PKCS_KEY_PAIR_GEN,
        )  # fmt: skip
