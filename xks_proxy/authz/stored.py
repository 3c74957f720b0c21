"""Policies kept in the key store database: ``authorization_policy = "database"`` (issue 13 §2,
"or the shared store").

The Cedar text lives in the ``authz_policies`` table of the database of the key store's software
backend (``keystore/policies.py``), one row per key store name, so every proxy of a fleet that
shares the database shares the policy. The admin API's ``PUT …/policy`` writes it after
validating it; nothing else does (there is no file to edit).

Every proxy keeps its ``Authorizer`` current with ``StoredPolicyFollower``: it reads the row at
start (a row that does not parse stops start-up, as a bad policy file does), then, whenever the
backend's store follower sees the store's revision move (PostgreSQL NOTIFY within milliseconds,
or the poll once a second), re-reads the row if it was written since, parses it off the event
loop and puts it in force with an empty decision cache (``Authorizer.replace``). A row that does
not parse there (written by another xks-proxy version) is logged and the running policy stays.
No row yet: every request is allowed, as with no policy, and the start-up log says so.

``check-config`` reads and parses the stored policy as start-up does (``check_stored_policies``):
one that does not parse fails it with start-up's message, and a key store with no stored policy
yet is reported as such (it would start, allowing every request).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from xks_proxy.authz.authorizer import Authorizer
from xks_proxy.authz.policy import PolicyError, PolicyFile, parse_policies
from xks_proxy.backends.software import SoftwareBackend
from xks_proxy.config import Config, KeyStoreConfig, SoftwareBackendConfig
from xks_proxy.errors import ConfigError
from xks_proxy.keystore.policies import PolicyRows, StoredPolicy
from xks_proxy.keystore.store import KeyDatabase, open_key_database

log = logging.getLogger(__name__)


def stored_name(key_store: str) -> Path:
    """How errors and warnings name a stored policy (in place of a file name)."""
    return Path(f"database policy of {key_store}")


def parse_stored(row: StoredPolicy) -> PolicyFile:
    return parse_policies(row.text, stored_name(row.key_store))


def backend_config(config: Config, store: KeyStoreConfig) -> SoftwareBackendConfig:
    backend = config.backends.get(store.backend)
    if not isinstance(backend, SoftwareBackendConfig):
        raise ConfigError(
            f'key store {store.name}: authorization_policy = "database" keeps the policy in '
            f"a software backend's key store database; backend {store.backend} is not one"
        )
    return backend


def open_policy_database(config: Config, store: KeyStoreConfig) -> KeyDatabase:
    """The database that holds ``store``'s policy (``config`` loaded with its backends)."""
    return open_key_database(backend_config(config, store))


def read_stored_policy(config: Config, store: KeyStoreConfig) -> StoredPolicy | None:
    database = open_policy_database(config, store)
    try:
        return PolicyRows(database).get(store.name)
    finally:
        database.close()


def parse_to_serve(row: StoredPolicy) -> PolicyFile:
    """The stored policy parsed as start-up parses it: ``ConfigError`` (the key store, and the
    error's line and column) when it does not parse."""
    try:
        return parse_stored(row)
    except PolicyError as error:
        raise ConfigError(f"key store {row.key_store}: {error}") from None


def no_policy_yet(key_store: str) -> str:
    return (
        f"key store {key_store}: no policy in the key store database yet: every request is "
        "allowed until one is put (admin API PUT …/policy)"
    )


def check_stored_policies(config: Config) -> list[str]:
    """What ``check-config`` says of every key store with ``authorization_policy =
    "database"``, after parsing its stored policy as start-up would (``ConfigError`` with
    start-up's message for one that does not parse; schema warnings are logged as start-up
    logs them)."""
    lines = []
    for store in config.key_stores:
        if not store.authorization_policy_in_store:
            continue
        row = read_stored_policy(config, store)
        if row is None:
            lines.append(no_policy_yet(store.name))
            continue
        policies = parse_to_serve(row)
        for warning in policies.warnings:
            log.warning("key store %s: %s", store.name, warning)
        lines.append(
            f"key store {store.name}: policy from the key store database ok "
            f"({len(policies.policies)} policies, put by {row.updated_by} at {row.updated_at}, "
            f"revision {row.revision})"
        )
    return lines


class StoredPolicyFollower:
    """Keeps one key store's ``Authorizer`` on the policy stored for it."""

    def __init__(self, authorizer: Authorizer, backend: SoftwareBackend) -> None:
        self._authorizer = authorizer
        self._backend = backend
        self._revision = -1
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._remove_listener: Callable[[], None] | None = None

    @property
    def key_store(self) -> str:
        return self._authorizer.key_store

    async def start(self) -> None:
        """The first read, which must work and parse; then follow the store. Listening starts
        first, so a put during the read is not missed (revisions only go forward)."""
        self._remove_listener = self._backend.add_store_listener(self._store_changed)
        async with self._lock:
            rows = PolicyRows(self._backend.database)
            row = await asyncio.to_thread(rows.get, self.key_store)
            if row is None:
                log.warning("%s", no_policy_yet(self.key_store))
                return
            self._install(row, await asyncio.to_thread(parse_to_serve, row))

    def stop(self) -> None:
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        for task in self._tasks:
            task.cancel()

    def _store_changed(self, revision: int) -> None:
        """Called on the event loop by the backend's follower when the store moved on."""
        task = asyncio.get_running_loop().create_task(self._refresh())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh(self) -> None:
        async with self._lock:  # one read at a time, so revisions only go forward
            rows = PolicyRows(self._backend.database)
            try:
                row = await asyncio.to_thread(rows.get, self.key_store, self._revision)
            except Exception as error:
                # The store follower reports an unreachable store; try again at its next move.
                log.warning("key store %s: policy not re-read: %s", self.key_store, error)
                return
            if row is None:
                return
            try:
                policies = await asyncio.to_thread(parse_stored, row)
            except PolicyError as error:
                log.error("key store %s: the running policy stays in force: %s",
                          self.key_store, error)  # fmt: skip
                self._revision = row.revision
                return
            self._install(row, policies)

    def _install(self, row: StoredPolicy, policies: PolicyFile) -> None:
        self._authorizer.replace(policies)
        self._revision = row.revision
        for warning in policies.warnings:
            log.warning("key store %s: %s", self.key_store, warning)
        log.info(
            "key store %s: policy from the key store database in force (%d policies, put by "
            "%s at %s, revision %d)",
            self.key_store, len(policies.policies), row.updated_by, row.updated_at, row.revision,
        )  # fmt: skip
