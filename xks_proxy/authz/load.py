"""The authorizers of a configuration, one per key store that names an ``authorization_policy``.

Called where a runtime is built, so start-up and every reload parse the policy files afresh (a
reload on SIGHUP picks up an edited policy file even when the TOML did not change). A file that
is missing or does not parse is a ``ConfigError`` naming the key, the file and the position:
start-up stops, and a reload is rejected with the running configuration left in force. What
the schema check finds (authz/schema.py) is logged as a warning and does not stop anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from xks_proxy.authz.authorizer import Authorizer
from xks_proxy.authz.policy import PolicyError, load_policy_file
from xks_proxy.config import Config
from xks_proxy.errors import ConfigError

log = logging.getLogger(__name__)


def load_authorizers(
    config: Config, observer_for: Callable[[str], Callable[[bool], None]] | None = None
) -> dict[str, Authorizer | None]:
    """Key store name → its authorizer, or None where no policy is configured.
    ``observer_for(key_store)`` is told each of that key store's decisions (metrics)."""
    authorizers: dict[str, Authorizer | None] = {}
    for index, store in enumerate(config.key_stores):
        path = store.authorization_policy
        where = f"key_stores[{index}].authorization_policy"
        configured = path is not None or store.authorization_policy_in_store
        observe = observer_for(store.name) if observer_for and configured else None
        if store.authorization_policy_in_store:
            # Its policies come from the key store database once the backend is open
            # (authz/stored.py); until then, none.
            authorizers[store.name] = Authorizer(store.name, None, observe)
            continue
        if path is None:
            authorizers[store.name] = None
            continue
        try:
            policies = load_policy_file(path)
        except PolicyError as error:
            raise ConfigError(f"{where}: {error}") from None
        for warning in policies.warnings:
            log.warning("%s: %s: %s", where, path, warning)
        authorizers[store.name] = Authorizer(store.name, policies, observe)
    return authorizers
