"""What every group of operations shares: the caller's context, finding keys and key stores in
the caller's region, the key-state rules, and KeyMetadata as DescribeKey renders it.

Key states follow the AWS KMS Developer Guide ("Key states of AWS KMS keys"): a disabled key
answers DisabledException to every cryptographic operation, whatever its origin; pending
deletion, pending import and an unconnected custom key store answer KMSInvalidStateException.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from xks_proxy.kms_emulator import errors
from xks_proxy.kms_emulator.errors import KmsError
from xks_proxy.kms_emulator.key_specs import SPECS, SYMMETRIC_DEFAULT, legacy_spec
from xks_proxy.kms_emulator.policy_eval import explicit_deny
from xks_proxy.kms_emulator.state import ConnectionState, Key, KeyState, KeyStore, Origin, State
from xks_proxy.kms_emulator.xks_client import ProxyEndpoint, XksClient
from xks_proxy.ratelimit import TokenBucket
from xks_proxy.sigv4 import Credential

DEFAULT_XKS_RATE = 1800.0
_KEY_ID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32}"
)
_ARN = re.compile(r"arn:aws[a-z-]*:kms:([a-z0-9-]+):(\d{12}):(key|alias)/(.+)")
# Management operations a key state refuses with KMSInvalidStateException (Developer Guide,
# "Key states of AWS KMS keys"); cryptographic operations are in ``Core.crypto_store``.
_REFUSED_STATES: dict[str, frozenset[KeyState]] = {
    operation: frozenset({KeyState.PENDING_DELETION})
    for operation in (
        "ScheduleKeyDeletion",
        "UpdateKeyDescription",
        "TagResource",
        "UntagResource",
        "PutKeyPolicy",
        "CreateAlias",
        "UpdateAlias",
        "DisableKeyRotation",
        "CreateGrant",
    )
} | {
    operation: frozenset({KeyState.PENDING_DELETION, KeyState.PENDING_IMPORT})
    for operation in (
        "EnableKey",
        "DisableKey",
        "EnableKeyRotation",
        "RotateKeyOnDemand",
        "ReplicateKey",
        "UpdatePrimaryRegion",
    )
}
_STATE_PHRASES = {
    KeyState.PENDING_DELETION: "pending deletion",
    KeyState.PENDING_IMPORT: "pending import",
    KeyState.DISABLED: "disabled",
    KeyState.ENABLED: "enabled",
}


@dataclass(frozen=True)
class Context:
    """Who is calling and where: from the request's SigV4 credential scope."""

    region: str
    account: str
    access_key_id: str
    request_id: str = ""
    source_ip: str = ""
    user_agent: str = ""
    event_id: str = ""  # the CloudTrail eventID of this call (event log, GetKeyLastUsage)

    @property
    def principal_arn(self) -> str:
        return f"arn:aws:iam::{self.account}:user/{self.access_key_id}"

    def arn(self, resource: str) -> str:
        return f"arn:aws:kms:{self.region}:{self.account}:{resource}"


Params = dict[str, Any]
Handler = Callable[["Core", Params, Context], Awaitable[dict[str, Any]]]


class Core:
    def __init__(
        self, state: State, xks: XksClient, *, account: str, strict: bool, xks_rate: float
    ) -> None:
        self.state = state
        self.xks = xks
        self.account = account
        self.strict = strict
        self._xks_rate = xks_rate
        self._quotas: dict[str, TokenBucket] = {}
        self._background: set[asyncio.Task[None]] = set()

    def in_background(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            await work

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # -- finding resources in the caller's region ----------------------------------------------
    def store(self, store_id: str, ctx: Context) -> KeyStore:
        store = self.state.key_stores.get(store_id)
        if store is None or store.region != ctx.region:
            raise errors.key_store_not_found(store_id)
        return store

    def stores(self, ctx: Context) -> list[KeyStore]:
        return sorted(
            (s for s in self.state.key_stores.values() if s.region == ctx.region),
            key=lambda s: s.created,
        )

    def keys(self, ctx: Context) -> list[Key]:
        return sorted(
            (
                k
                for k in self.state.keys.values()
                if (k.region, k.account) == (ctx.region, ctx.account)
            ),
            key=lambda k: k.created,
        )

    def key(self, key_ref: str, ctx: Context, *, aliases: bool = True) -> Key:
        """A key by id, key ARN, alias name or alias ARN (``aliases=False``: ids and ARNs only)."""
        arn = _ARN.fullmatch(key_ref)
        if arn is not None:
            region, account, kind, rest = arn.groups()
            if kind == "alias":
                if not aliases:
                    raise errors.invalid_key_id(key_ref)
                if (region, account) != (ctx.region, ctx.account):
                    raise errors.alias_not_found(key_ref)
                return self._by_alias(f"alias/{rest}", ctx)
            if (region, account) != (ctx.region, ctx.account):
                raise errors.key_not_found(key_ref)
            key_ref = rest
        elif key_ref.startswith("alias/"):
            if not aliases:
                raise errors.invalid_key_id(key_ref)
            return self._by_alias(key_ref, ctx)
        elif key_ref.startswith("arn:"):
            raise KmsError("NotFoundException", f"Invalid arn {key_ref}")
        if not _KEY_ID.fullmatch(key_ref):
            raise errors.invalid_key_id(key_ref)
        key = self.state.keys.get(ctx.arn(f"key/{key_ref}"))
        if key is None:
            raise errors.key_not_found(ctx.arn(f"key/{key_ref}"))
        return key

    def _by_alias(self, name: str, ctx: Context) -> Key:
        alias = self.state.aliases.get((ctx.region, name))
        key = self.state.keys.get(ctx.arn(f"key/{alias.key_id}")) if alias else None
        if key is None:
            raise errors.alias_not_found(ctx.arn(name))
        return key

    def replicas(self, key: Key) -> list[Key]:
        """The other keys of a multi-Region key (its primary and replicas in other regions)."""
        if not key.multi_region:
            return []
        return [
            k
            for k in self.state.keys.values()
            if k.id == key.id and k.account == key.account and k.arn != key.arn
        ]

    @staticmethod
    def new_key_id(*, multi_region: bool) -> str:
        # Multi-Region keys have ids of "mrk-" and 32 hex digits (Developer Guide).
        return f"mrk-{uuid.uuid4().hex}" if multi_region else str(uuid.uuid4())

    @staticmethod
    def authorize(key: Key, action: str, ctx: Context) -> None:
        """AccessDeniedException when the key policy explicitly denies ``action`` to the caller."""
        if key.policy is not None and explicit_deny(
            key.policy, action, ctx.principal_arn, ctx.account
        ):
            raise KmsError(
                "AccessDeniedException",
                f"User: {ctx.principal_arn} is not authorized to perform: {action} on resource: "
                f"{key.arn} with an explicit deny in a resource-based policy",
            )

    # -- key states -----------------------------------------------------------------------------
    def key_state(self, key: Key) -> KeyState:
        if key.state == KeyState.ENABLED and key.key_store_id is not None:
            store = self.state.key_stores.get(key.key_store_id)
            if store is None or store.state != ConnectionState.CONNECTED:
                return KeyState.UNAVAILABLE
        return key.state

    @staticmethod
    def refuse_state(key: Key, operation: str) -> None:
        """KMSInvalidStateException where the key-state table refuses a management operation."""
        if key.state in _REFUSED_STATES.get(operation, frozenset()):
            raise invalid_state(key)

    def crypto_store(self, key: Key) -> KeyStore | None:
        """Check that ``key`` may be used now; its connected key store, or None for AWS_KMS."""
        if key.state == KeyState.DISABLED:
            raise KmsError("DisabledException", f"{key.arn} is disabled.")
        if key.state != KeyState.ENABLED:
            raise invalid_state(key)
        if key.key_store_id is None:
            return None
        store = self.state.key_stores.get(key.key_store_id)
        if store is None or store.state != ConnectionState.CONNECTED:
            raise KmsError("KMSInvalidStateException", errors.NOT_CONNECTED)
        quota = self._quotas.setdefault(
            store.id, TokenBucket(self._xks_rate, max(1, int(self._xks_rate)))
        )
        if not quota.try_acquire():
            # KMS throttles a key store over its quota itself, without calling the proxy.
            raise KmsError(
                "ThrottlingException",
                "You have exceeded the rate at which you may call KMS. Reduce the frequency of "
                "your calls.",
            )
        return store

    @staticmethod
    def proxy(store: KeyStore, ctx: Context) -> ProxyEndpoint:
        return ProxyEndpoint(
            store.endpoint,
            store.uri_path,
            Credential(store.access_key_id, store.secret),
            ctx.region,
        )

    # -- DescribeKey ----------------------------------------------------------------------------
    def metadata(self, key: Key) -> dict[str, Any]:
        state = self.key_state(key)
        metadata: dict[str, Any] = {
            "AWSAccountId": key.account,
            "KeyId": key.id,
            "Arn": key.arn,
            "CreationDate": key.created,
            "Enabled": state == KeyState.ENABLED,
            "Description": key.description,
            "KeyUsage": key.key_usage,
            "KeyState": state.value,
            "Origin": key.origin.value,
            "KeyManager": "CUSTOMER",
            **legacy_spec(key.key_spec),
            "KeySpec": key.key_spec,
            **SPECS[key.key_spec].algorithms(key.key_usage),
            "MultiRegion": key.multi_region,
        }
        if key.multi_region:
            family = sorted([key, *self.replicas(key)], key=lambda k: k.region)
            primary = next((k for k in family if k.primary), key)
            metadata["MultiRegionConfiguration"] = {
                "MultiRegionKeyType": "PRIMARY" if key.primary else "REPLICA",
                "PrimaryKey": {"Arn": primary.arn, "Region": primary.region},
                "ReplicaKeys": [
                    {"Arn": k.arn, "Region": k.region} for k in family if k is not primary
                ],
            }
        if key.key_store_id is not None:
            metadata["CustomKeyStoreId"] = key.key_store_id
            metadata["XksKeyConfiguration"] = {"Id": key.xks_key_id}
        elif key.current_material is not None and key.key_spec == SYMMETRIC_DEFAULT:
            metadata["CurrentKeyMaterialId"] = key.current_material
        if key.expiration_model is not None:
            metadata["ExpirationModel"] = key.expiration_model
            if key.valid_to is not None:
                metadata["ValidTo"] = key.valid_to
        if key.deletion_date is not None:
            metadata["DeletionDate"] = key.deletion_date
            metadata["PendingDeletionWindowInDays"] = key.pending_window_days
        return metadata


def invalid_state(key: Key) -> KmsError:
    return KmsError("KMSInvalidStateException", f"{key.arn} is {_STATE_PHRASES[key.state]}.")


def is_external_key_store(key: Key) -> bool:
    return key.origin == Origin.EXTERNAL_KEY_STORE
