"""Provisioning helpers for PKCS#11 tokens: ``xks-proxy pkcs11 create-key|list-keys``.

Keys are made the way an XKS key should be: AES-256, on the token (CKA_TOKEN), sensitive and
not extractable, with CKA_LABEL and CKA_ID both set to the key id so either lookup finds it,
and CKA_ENCRYPT / CKA_DECRYPT as asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11 import exceptions as p11

from xks_proxy.backends import pkcs11_library
from xks_proxy.backends.base import DECRYPT, ENCRYPT
from xks_proxy.config import Pkcs11BackendConfig, TokenSelector
from xks_proxy.errors import ConfigError


@dataclass(frozen=True, slots=True)
class TokenKey:
    label: str
    key_type: str
    bits: int
    usage: tuple[str, ...]


def _open(config: Pkcs11BackendConfig, selector: TokenSelector) -> Any:
    library = pkcs11_library.load(config.module)
    try:
        if selector.label is not None:
            token = library.get_token(token_label=selector.label)
        else:
            assert selector.serial is not None
            token = library.get_token(token_serial=selector.serial.encode())
        return token.open(rw=True, user_pin=config.user_pin)
    except p11.NoSuchToken:
        raise ConfigError(f"backends.{config.name}.tokens: no token with {selector}") from None
    except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange, p11.PinLocked):
        raise ConfigError(f"backends.{config.name}.user_pin: login failed") from None


def create_key(
    config: Pkcs11BackendConfig, selector: TokenSelector, label: str, usage: frozenset[str]
) -> None:
    session = _open(config, selector)
    try:
        try:
            session.get_key(object_class=ObjectClass.SECRET_KEY, label=label)
        except p11.NoSuchKey:
            pass
        else:
            raise FileExistsError(label)
        session.generate_key(
            KeyType.AES,
            256,
            label=label,
            id=label.encode(),
            store=True,
            template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.ENCRYPT: ENCRYPT in usage,
                Attribute.DECRYPT: DECRYPT in usage,
                # Least privilege: an XKS key only ever encrypts and decrypts.
                Attribute.WRAP: False,
                Attribute.UNWRAP: False,
                Attribute.SIGN: False,
                Attribute.VERIFY: False,
                Attribute.DERIVE: False,
            },
        )
    finally:
        session.close()


def list_keys(config: Pkcs11BackendConfig, selector: TokenSelector) -> list[TokenKey]:
    session = _open(config, selector)
    try:
        keys = []
        for key in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}):
            usage = tuple(
                name
                for attribute, name in ((Attribute.ENCRYPT, ENCRYPT), (Attribute.DECRYPT, DECRYPT))
                if key[attribute]
            )
            key_type = key[Attribute.KEY_TYPE]
            keys.append(TokenKey(key.label, key_type.name, key[Attribute.VALUE_LEN] * 8, usage))
        return sorted(keys, key=lambda k: k.label)
    finally:
        session.close()
