"""The KMS emulator: the operation table and how one call runs.

A call is checked against the operation's input shape in botocore's service model (AWS's
validation, in AWS's words: ``shapes``), the state's clocks are advanced (scheduled deletions,
automatic rotations), then the operation's handler runs. Handlers are grouped by resource:
``key_stores``, ``keys``, ``rotation``, ``aliases``, ``policies`` (policies and tags),
``grants``, ``crypto``, ``asymmetric``, ``signing``, ``kem``, ``imports``, ``multi_region``,
``usage``. An
operation KMS has and the emulator does not answers UnsupportedOperationException naming it; a
name KMS does not have, UnknownOperationException.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from xks_proxy.kms_emulator import (
    aliases,
    asymmetric,
    crypto,
    grants,
    imports,
    kem,
    key_stores,
    keys,
    multi_region,
    policies,
    rotation,
    signing,
    usage,
)
from xks_proxy.kms_emulator.core import DEFAULT_XKS_RATE, Context, Core, Handler, Params
from xks_proxy.kms_emulator.errors import KmsError
from xks_proxy.kms_emulator.events import EventLog
from xks_proxy.kms_emulator.shapes import check_request, operation_names, service_model
from xks_proxy.kms_emulator.state import Key, State
from xks_proxy.kms_emulator.xks_client import XksClient

__all__ = ["DEFAULT_XKS_RATE", "OPERATIONS", "Context", "KmsEmulator"]

OPERATIONS: dict[str, Handler] = {
    # custom key stores
    "CreateCustomKeyStore": key_stores.create,
    "DescribeCustomKeyStores": key_stores.describe,
    "ConnectCustomKeyStore": key_stores.connect,
    "DisconnectCustomKeyStore": key_stores.disconnect,
    "UpdateCustomKeyStore": key_stores.update,
    "DeleteCustomKeyStore": key_stores.delete,
    # keys
    "CreateKey": keys.create,
    "DescribeKey": keys.describe,
    "ListKeys": keys.list_keys,
    "EnableKey": keys.enable,
    "DisableKey": keys.disable,
    "UpdateKeyDescription": keys.update_description,
    "ScheduleKeyDeletion": keys.schedule_deletion,
    "CancelKeyDeletion": keys.cancel_deletion,
    # multi-Region keys
    "ReplicateKey": multi_region.replicate,
    "UpdatePrimaryRegion": multi_region.update_primary_region,
    # imported key material
    "GetParametersForImport": imports.get_parameters,
    "ImportKeyMaterial": imports.import_material,
    "DeleteImportedKeyMaterial": imports.delete_material,
    # rotation
    "GetKeyRotationStatus": rotation.get_status,
    "EnableKeyRotation": rotation.enable,
    "DisableKeyRotation": rotation.disable,
    "RotateKeyOnDemand": rotation.rotate_on_demand,
    "ListKeyRotations": rotation.list_rotations,
    # aliases
    "CreateAlias": aliases.create,
    "UpdateAlias": aliases.update,
    "ListAliases": aliases.list_aliases,
    "DeleteAlias": aliases.delete,
    # key policies and tags
    "GetKeyPolicy": policies.get_key_policy,
    "PutKeyPolicy": policies.put_key_policy,
    "ListKeyPolicies": policies.list_key_policies,
    "TagResource": policies.tag_resource,
    "UntagResource": policies.untag_resource,
    "ListResourceTags": policies.list_resource_tags,
    # grants
    "CreateGrant": grants.create,
    "ListGrants": grants.list_grants,
    "ListRetirableGrants": grants.list_retirable,
    "RetireGrant": grants.retire,
    "RevokeGrant": grants.revoke,
    # cryptography
    "Encrypt": crypto.encrypt,
    "Decrypt": crypto.decrypt,
    "ReEncrypt": crypto.re_encrypt,
    "GenerateDataKey": crypto.generate_data_key,
    "GenerateDataKeyWithoutPlaintext": crypto.generate_data_key_without_plaintext,
    "GenerateRandom": crypto.generate_random,
    # asymmetric and HMAC keys
    "Sign": signing.sign,
    "Verify": signing.verify,
    "Encapsulate": kem.encapsulate,
    "Decapsulate": kem.decapsulate,
    "GetPublicKey": asymmetric.get_public_key,
    "GenerateMac": asymmetric.generate_mac,
    "VerifyMac": asymmetric.verify_mac,
    "GenerateDataKeyPair": asymmetric.generate_data_key_pair,
    "GenerateDataKeyPairWithoutPlaintext": asymmetric.generate_data_key_pair_without_plaintext,
    "DeriveSharedSecret": asymmetric.derive_shared_secret,
    "GetKeyLastUsage": usage.get_key_last_usage,
}
# Checked by the handler itself: a local http:// endpoint is allowed unless --strict.
_RELAXED_PATTERNS = frozenset({"XksProxyUriEndpointType"})


class KmsEmulator:
    def __init__(
        self,
        state: State,
        xks: XksClient,
        *,
        account: str = "111122223333",
        strict: bool = False,
        xks_rate: float = DEFAULT_XKS_RATE,
        event_log: Path | None = None,
    ) -> None:
        service_model()  # fail at start-up, not at the first request, without botocore
        self.core = Core(state, xks, account=account, strict=strict, xks_rate=xks_rate)
        self.state = state
        self.xks = xks
        self.account = account
        self._relaxed = frozenset() if strict else _RELAXED_PATTERNS
        self.events = EventLog(event_log) if event_log is not None else None
        self._tracked = usage.tracked_operations()

    async def close(self) -> None:
        await self.core.close()
        if self.events is not None:
            self.events.close()

    async def call(self, operation: str, params: Params, ctx: Context) -> dict[str, Any]:
        if self.events is None:
            return await self._call(operation, params, ctx)
        try:
            result = await self._call(operation, params, ctx)
        except KmsError as error:
            key = self._involved_key(params, {}, ctx)
            self.events.record(operation, params, ctx, result=None, error=error, key=key)
            raise
        key = self._involved_key(params, result, ctx)
        self.events.record(operation, params, ctx, result=result, error=None, key=key)
        return result

    def _involved_key(self, params: Params, result: dict[str, Any], ctx: Context) -> Key | None:
        """The key a call was about, for the event's resources (None: none, or not found)."""
        metadata = result.get("KeyMetadata") or {}
        for reference in (metadata.get("KeyId"), result.get("KeyId"), params.get("KeyId"),
                          params.get("DestinationKeyId")):  # fmt: skip
            if (key := self._key_named(reference, ctx)) is not None:
                return key
        return None

    def _key_named(self, reference: Any, ctx: Context) -> Key | None:
        if isinstance(reference, str):
            try:
                return self.core.key(reference, ctx)
            except KmsError:
                return None
        return None

    async def _call(self, operation: str, params: Params, ctx: Context) -> dict[str, Any]:
        handler = OPERATIONS.get(operation)
        if handler is None:
            if operation in operation_names():
                raise KmsError(
                    "UnsupportedOperationException",
                    f"The KMS emulator does not implement {operation} yet.",
                )
            raise KmsError("UnknownOperationException", f"Unknown operation {operation}")
        check_request(operation, params, relaxed=self._relaxed)
        now = time.time()
        keys.delete_expired(self.core, now)
        rotation.rotate_due(self.core, now)
        imports.expire_due(self.core, now)
        self._authorize(operation, params, ctx)
        result = await handler(self.core, params, ctx)
        if operation in self._tracked:
            used = [self._involved_key(params, result, ctx)]
            if operation == "ReEncrypt":  # its source key was used too
                used.append(self._key_named(result.get("SourceKeyId"), ctx))
            usage.record(self.core, operation, [k for k in used if k is not None], ctx)
        return result

    def _authorize(self, operation: str, params: Params, ctx: Context) -> None:
        """Explicit denies in the policies of the keys the parameters name (ciphertexts name
        theirs: ``layers.open_blob`` checks those). A reference that does not resolve is left
        to the handler, which words that error."""
        for member, action in (("KeyId", operation), ("TargetKeyId", operation),
                               ("SourceKeyId", "ReEncryptFrom"),
                               ("DestinationKeyId", "ReEncryptTo")):  # fmt: skip
            if isinstance(params.get(member), str):
                try:
                    key = self.core.key(params[member], ctx)
                except KmsError:
                    continue
                self.core.authorize(key, f"kms:{action}", ctx)
