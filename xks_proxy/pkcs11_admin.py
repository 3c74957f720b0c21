"""Provisioning helpers for PKCS#11 tokens: ``xks-proxy pkcs11 create-key|list-keys``, and
the token side of ``xks-proxy keys rotate|list`` for HSM keys (``keymgmt.hsm``).

Keys are made the way an XKS key should be: AES-256, on the token (CKA_TOKEN), sensitive and
not extractable, with CKA_LABEL and CKA_ID both set to the key id so either lookup finds it,
and CKA_ENCRYPT / CKA_DECRYPT as asked.

Rotation makes the next version (``backends.pkcs11_versions``: ``<key id>#<n>``) with the same
template and version 1's usage. Two rotations of one key at the same moment (two hosts) must not
both make version n: a duplicate name would make the version ambiguous for every proxy. So the
object is made under a private name (``<key id>#<n>~<random>``, which no proxy looks up), the
token is then searched for any other object named version n or on its way to be; only when there
is none is the object renamed to version n, else it is destroyed, unused, and the rotation
refused. Of two racing rotations, the later search always sees the earlier object, so at most
one of them completes (both may refuse; running it again then works). A rotation that fails
after making its object destroys it; one killed in between leaves its ``~<random>`` object,
which later rotations name in their refusal so that an operator can delete it.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass
from typing import Any

from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11 import exceptions as p11

from xks_proxy.backends import pkcs11_library
from xks_proxy.backends.base import DECRYPT, ENCRYPT
from xks_proxy.backends.pkcs11_errors import TokenLostError
from xks_proxy.backends.pkcs11_tokens import find_token
from xks_proxy.backends.pkcs11_versions import (
    FIRST_VERSION,
    find_version,
    newest_version,
    parse_version_name,
    version_name,
)
from xks_proxy.config import Pkcs11BackendConfig, TokenSelector
from xks_proxy.errors import ConfigError
from xks_proxy.keystore.records import KeyStateError, UnknownKeyError
from xks_proxy.model import key_id_problem

_USAGE_FLAGS = ((Attribute.ENCRYPT, ENCRYPT), (Attribute.DECRYPT, DECRYPT))
# Marks a version being made (see the module docstring); never in a key id.
_PENDING = "~"


@dataclass(frozen=True, slots=True)
class TokenKey:
    label: str
    key_type: str
    bits: int
    usage: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VersionedKey:
    """A customer key on the token: its usage (version 1's) and every version it has."""

    key_id: str
    usage: frozenset[str]
    versions: tuple[int, ...]


def _usage(key: Any) -> tuple[str, ...]:
    return tuple(name for attribute, name in _USAGE_FLAGS if key[attribute])


def _open(config: Pkcs11BackendConfig, selector: TokenSelector) -> Any:
    library = pkcs11_library.load(config.module)
    try:
        token = find_token(library, selector)
        session = token.open(rw=True)
        # Login state belongs to the process: inside a running proxy (the admin API) the backend
        # is logged in already; a second login would fail, and its logout on close would log the
        # backend out. Only a logged-in session sees private objects (the health key is one).
        for _ in session.get_objects({Attribute.PRIVATE: True}):
            return session
        session.close()
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
        _generate(session, label, usage)
    finally:
        session.close()


def _generate(session: Any, name: str, usage: frozenset[str]) -> Any:
    return session.generate_key(
        KeyType.AES,
        256,
        label=name,
        id=name.encode(),
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


def _secret_key_labels(session: Any) -> list[str]:
    return [key.label for key in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})]


def _confirm_token(session: Any, config: Pkcs11BackendConfig) -> None:
    """A missing key is only missing while the health key (on every token) is there: a token
    whose storage vanished finds no objects at all (``backends.pkcs11``, issue 9 finding 3)."""
    try:
        session.get_key(object_class=ObjectClass.SECRET_KEY, label=config.health_key_label)
    except p11.PKCS11Error:
        raise TokenLostError() from None


def rotate_key(config: Pkcs11BackendConfig, selector: TokenSelector, key_id: str) -> int:
    """Make the next version of ``key_id``; returns its number.

    Raises UnknownKeyError (no version 1), KeyStateError (not an AES-256 key, the health key,
    or a rotation of the same key running elsewhere at this moment).
    """
    if key_id == config.health_key_label:
        raise KeyStateError("the health-check key is not a customer key and is never rotated")
    session = _open(config, selector)
    try:
        try:
            first = find_version(session, key_id, FIRST_VERSION, config.key_lookup)
        except p11.NoSuchKey:
            _confirm_token(session, config)
            raise UnknownKeyError(key_id) from None
        if first[Attribute.KEY_TYPE] != KeyType.AES or first[Attribute.VALUE_LEN] != 32:
            raise KeyStateError(f"key {key_id} is not an AES-256 key; only those are rotated")
        version = newest_version(session, key_id, config.key_lookup) + 1
        name = version_name(key_id, version)
        pending = f"{name}{_PENDING}{secrets.token_hex(8)}"
        made = _generate(session, pending, frozenset(_usage(first)))
        try:
            rivals = [
                label
                for label in _secret_key_labels(session)
                if label != pending and (label == name or label.startswith(name + _PENDING))
            ]
            if rivals:
                raise KeyStateError(
                    f"another rotation of key {key_id} is making version {version} at this "
                    f"moment ({', '.join(sorted(rivals))}); this one changed nothing: run "
                    "`keys list` and rotate again if still needed (an object whose label ends "
                    f"in {_PENDING}<hex> that stays is left by a crashed rotation: delete it)"
                )
            # Proxies find a version by one attribute (``key_lookup``); set it last, so that no
            # proxy can use the object before it is complete, and it can still be destroyed.
            final = {Attribute.LABEL: name, Attribute.ID: name.encode()}
            last = Attribute.ID if config.key_lookup == "id" else Attribute.LABEL
            for attribute in sorted(final, key=lambda each: each == last):
                made[attribute] = final[attribute]
        except BaseException:
            with contextlib.suppress(p11.PKCS11Error):
                made.destroy()
            raise
        return version
    finally:
        session.close()


def key_versions(config: Pkcs11BackendConfig, selector: TokenSelector) -> list[VersionedKey]:
    """Every customer key on the token (secret keys named by a key id) with its versions."""
    session = _open(config, selector)
    try:
        usages: dict[str, frozenset[str]] = {}
        versions: dict[str, list[int]] = {}
        _confirm_token(session, config)  # an empty list must mean no keys, not no token
        for key in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}):
            name = (
                key[Attribute.ID].decode(errors="replace")
                if config.key_lookup == "id"
                else (key.label)
            )
            parsed = parse_version_name(name)
            if parsed is None or key_id_problem(parsed[0]) or name == config.health_key_label:
                continue
            key_id, version = parsed
            versions.setdefault(key_id, []).append(version)
            if version == FIRST_VERSION:
                usages[key_id] = frozenset(_usage(key))
        return [
            VersionedKey(key_id, usages[key_id], tuple(sorted(versions[key_id])))
            for key_id in sorted(usages)  # versions without a version 1 are no key
        ]
    finally:
        session.close()


def list_keys(config: Pkcs11BackendConfig, selector: TokenSelector) -> list[TokenKey]:
    session = _open(config, selector)
    try:
        keys = []
        for key in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}):
            usage = _usage(key)
            key_type = key[Attribute.KEY_TYPE]
            keys.append(TokenKey(key.label, key_type.name, key[Attribute.VALUE_LEN] * 8, usage))
        return sorted(keys, key=lambda k: k.label)
    finally:
        session.close()
