"""The KMS operations the emulator answers (kms-emulator.md), one method each.

Keys with Origin AWS_KMS live wholly in the emulator. Keys in an external key store get double
encryption as AWS KMS does it: an inner AES-256-GCM layer under the emulator's own per-key
material (binding the encryption context), then the XKS proxy's Encrypt of that inner
ciphertext, with request metadata, AAD, and for GenerateDataKey* a CDIV that is checked.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xks_proxy.config import ACCESS_KEY_ID_PATTERN, SECRET_PATTERN, URI_PATH_PATTERN
from xks_proxy.kms_emulator import errors
from xks_proxy.kms_emulator.blob import Blob, BlobError
from xks_proxy.kms_emulator.errors import KmsError, ProxyCallError
from xks_proxy.kms_emulator.state import Key, KeyStore, State
from xks_proxy.kms_emulator.xks_client import Caller, ProxyEndpoint, XksClient, b64, unb64
from xks_proxy.ratelimit import TokenBucket
from xks_proxy.sigv4 import Credential

log = logging.getLogger(__name__)
AWS_KMS = "AWS_KMS"
EXTERNAL = "EXTERNAL_KEY_STORE"
MAX_PLAINTEXT = 4096
AWS_ENDPOINT = re.compile(r"https://[a-zA-Z0-9.-]+")
LOCAL_ENDPOINT = re.compile(r"https?://[a-zA-Z0-9.-]+(:\d{1,5})?")
DEFAULT_XKS_RATE = 1800.0


@dataclass(frozen=True)
class Context:
    """Who is calling and where: from the request's SigV4 credential scope."""

    region: str
    account: str
    access_key_id: str

    @property
    def principal_arn(self) -> str:
        return f"arn:aws:iam::{self.account}:user/{self.access_key_id}"


def _string(params: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = params.get(name)
    if value is None:
        if required:
            raise errors.validation(
                f"1 validation error detected: Value null at '{name}' "
                "failed to satisfy constraint: Member must not be null"
            )
        return None
    if not isinstance(value, str):
        raise errors.validation(f"{name} must be a string")
    return value


def _required(params: dict[str, Any], name: str) -> str:
    value = _string(params, name)
    assert value is not None
    return value


def _blob(params: dict[str, Any], name: str) -> bytes:
    try:
        return unb64(_required(params, name))
    except ProxyCallError:
        raise errors.validation(f"{name} is not valid Base64") from None


def _context(params: dict[str, Any], name: str = "EncryptionContext") -> bytes:
    context = params.get(name) or {}
    if not isinstance(context, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in context.items()
    ):
        raise errors.validation(f"{name} must map strings to strings")
    return json.dumps(context, sort_keys=True, separators=(",", ":")).encode()


class KmsEmulator:
    def __init__(
        self,
        state: State,
        xks: XksClient,
        *,
        account: str = "111122223333",
        strict: bool = False,
        xks_rate: float = DEFAULT_XKS_RATE,
    ) -> None:
        self.state = state
        self.xks = xks
        self.account = account
        self.strict = strict
        self._xks_rate = xks_rate
        self._quotas: dict[str, TokenBucket] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.operations: dict[str, Callable[[dict[str, Any], Context], Awaitable[Any]]] = {
            name.removeprefix("op_"): getattr(self, name)
            for name in dir(self)
            if name.startswith("op_")
        }

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # -- lookups -------------------------------------------------------------------------------
    def _store(self, store_id: str) -> KeyStore:
        store = self.state.key_stores.get(store_id)
        if store is None:
            raise KmsError(
                "CustomKeyStoreNotFoundException", f"Custom key store '{store_id}' does not exist."
            )
        return store

    def _key(self, key_ref: str, ctx: Context) -> Key:
        if key_ref.startswith("alias/") or ":alias/" in key_ref:
            name = key_ref[key_ref.index("alias/") :]
            key_id = self.state.aliases.get(name)
            if key_id is None:
                raise errors.not_found(
                    f"Alias arn:aws:kms:{ctx.region}:{ctx.account}:{name} is not found."
                )
            key_ref = key_id
        key = self.state.keys.get(key_ref.rsplit("/", 1)[-1])
        if key is None:
            raise errors.not_found(f"Key '{key_ref}'")
        return key

    def _proxy(self, store: KeyStore, ctx: Context) -> ProxyEndpoint:
        return ProxyEndpoint(
            store.endpoint,
            store.uri_path,
            Credential(store.access_key_id, store.secret),
            ctx.region,
        )

    def _key_state(self, key: Key) -> str:
        if key.state == "Enabled" and key.key_store_id is not None:
            store = self.state.key_stores.get(key.key_store_id)
            if store is None or store.state != "CONNECTED":
                return "Unavailable"
        return key.state

    def _usable(self, key: Key) -> KeyStore | None:
        if key.state == "PendingDeletion":
            raise KmsError("KMSInvalidStateException", f"{key.arn} is pending deletion.")
        if key.state != "Enabled":
            raise KmsError("KMSInvalidStateException", f"{key.arn} is disabled.")
        if key.key_store_id is None:
            return None
        store = self._store(key.key_store_id)
        if store.state != "CONNECTED":
            raise KmsError("KMSInvalidStateException", errors.NOT_CONNECTED)
        quota = self._quotas.setdefault(
            store.id, TokenBucket(self._xks_rate, max(1, int(self._xks_rate)))
        )
        if not quota.try_acquire():
            # KMS throttles a key store over its quota itself, without calling the proxy.
            raise KmsError(
                "ThrottlingException",
                "You have exceeded the rate at which you may "
                "call KMS. Reduce the frequency of your calls.",
            )
        return store

    def _metadata(self, key: Key) -> dict[str, Any]:
        state = self._key_state(key)
        metadata: dict[str, Any] = {
            "AWSAccountId": key.account,
            "KeyId": key.id,
            "Arn": key.arn,
            "CreationDate": key.created,
            "Enabled": state == "Enabled",
            "Description": key.description,
            "KeyUsage": "ENCRYPT_DECRYPT",
            "KeyState": state,
            "Origin": key.origin,
            "KeyManager": "CUSTOMER",
            "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT",
            "KeySpec": "SYMMETRIC_DEFAULT",
            "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
            "MultiRegion": False,
        }
        if key.key_store_id is not None:
            metadata["CustomKeyStoreId"] = key.key_store_id
            metadata["XksKeyConfiguration"] = {"Id": key.xks_key_id}
        if key.deletion_date is not None:
            metadata["DeletionDate"] = key.deletion_date
            metadata["PendingDeletionWindowInDays"] = key.pending_window_days
        return metadata

    # -- the two layers ---------------------------------------------------------------------------
    @staticmethod
    def _inner_aad(key: Key, context: bytes) -> bytes:
        return key.id.encode() + b"|" + context

    @staticmethod
    def _proxy_aad(key: Key, context: bytes) -> bytes:
        # KMS's own choice of AAD; it binds the key and the encryption context (xks-spec §4.2).
        return hashlib.sha256(key.arn.encode() + b"|" + context).digest()

    async def _seal(
        self,
        key: Key,
        plaintext: bytes,
        context: bytes,
        ctx: Context,
        operation: str,
        *,
        integrity: bool = False,
    ) -> bytes:
        store = self._usable(key)
        iv = os.urandom(12)
        inner = iv + AESGCM(unb64(key.material)).encrypt(
            iv, plaintext, self._inner_aad(key, context)
        )
        if store is None:
            return Blob(key.id, inner=inner).encode()
        caller = Caller(ctx.principal_arn, operation, key.arn)
        try:
            sealed = await self.xks.encrypt(
                self._proxy(store, ctx),
                key.xks_key_id or "",
                inner,
                self._proxy_aad(key, context),
                caller,
                integrity=integrity,
            )
        except ProxyCallError as error:
            raise errors.for_crypto(error) from None
        return Blob(key.id, xks=sealed).encode()

    async def _open(
        self, raw: bytes, context: bytes, ctx: Context, operation: str, key_ref: str | None
    ) -> tuple[Key, bytes]:
        try:
            blob = Blob.decode(raw)
        except BlobError:
            raise KmsError("InvalidCiphertextException", "") from None
        key = self.state.keys.get(blob.key_id)
        if key is None:
            raise KmsError("InvalidCiphertextException", "")
        if key_ref is not None and self._key(key_ref, ctx).id != key.id:
            raise KmsError(
                "IncorrectKeyException",
                "The key ID in the request does not "
                "identify a CMK that can perform this operation.",
            )
        store = self._usable(key)
        inner = blob.inner
        if store is not None:
            if blob.xks is None:
                raise KmsError("InvalidCiphertextException", "")
            try:
                inner = await self.xks.decrypt(
                    self._proxy(store, ctx),
                    key.xks_key_id or "",
                    blob.xks,
                    self._proxy_aad(key, context),
                    Caller(ctx.principal_arn, operation, key.arn),
                )
            except ProxyCallError as error:
                raise errors.for_crypto(error) from None
        if inner is None or len(inner) < 28:
            raise KmsError("InvalidCiphertextException", "")
        try:
            plaintext = AESGCM(unb64(key.material)).decrypt(
                inner[:12], inner[12:], self._inner_aad(key, context)
            )
        except InvalidTag:
            if store is not None:
                raise KmsError(
                    "KMSInvalidStateException", errors.MESSAGES[errors.ProxyFailure.BAD_RESULT]
                ) from None
            raise KmsError("InvalidCiphertextException", "") from None
        return key, plaintext

    # -- custom key stores ------------------------------------------------------------------------
    def _check_endpoint(self, endpoint: str) -> None:
        if AWS_ENDPOINT.fullmatch(endpoint):
            return
        if not self.strict and LOCAL_ENDPOINT.fullmatch(endpoint):
            log.warning(
                "XksProxyUriEndpoint %s: AWS KMS requires https:// on port 443 "
                "(accepted here; --strict refuses it)",
                endpoint,
            )
            return
        raise errors.validation("XksProxyUriEndpoint must match ^https://[a-zA-Z0-9.-]+$")

    @staticmethod
    def _check_credential(credential: Any) -> tuple[str, str]:
        if not isinstance(credential, dict):
            raise errors.validation("XksProxyAuthenticationCredential is required")
        access_key_id = str(credential.get("AccessKeyId", ""))
        secret = str(credential.get("RawSecretAccessKey", ""))
        if not ACCESS_KEY_ID_PATTERN.fullmatch(access_key_id):
            raise errors.validation("AccessKeyId must be 20-30 characters of A-Z and 2-7")
        if not SECRET_PATTERN.fullmatch(secret):
            raise errors.validation(
                "RawSecretAccessKey must be 43-64 characters of A-Z a-z 0-9 / + ="
            )
        return access_key_id, secret

    async def _verify_proxy(self, store: KeyStore, ctx: Context, operation: str) -> None:
        try:
            await self.xks.health(self._proxy(store, ctx), operation)
        except ProxyCallError as error:
            raise errors.for_key_store_operation(error) from None

    async def op_CreateCustomKeyStore(self, params: dict[str, Any], ctx: Context) -> Any:
        name = _required(params, "CustomKeyStoreName")
        kind = params.get("CustomKeyStoreType", "AWS_CLOUDHSM")
        if kind != EXTERNAL:
            raise KmsError(
                "UnsupportedOperationException",
                "The emulator supports only EXTERNAL_KEY_STORE key stores.",
            )
        if params.get("XksProxyConnectivity", "PUBLIC_ENDPOINT") != "PUBLIC_ENDPOINT":
            raise KmsError(
                "UnsupportedOperationException",
                "The emulator supports only PUBLIC_ENDPOINT connectivity.",
            )
        if any(s.name == name for s in self.state.key_stores.values()):
            raise KmsError(
                "CustomKeyStoreNameInUseException",
                f"Custom key store name '{name}' is already in use.",
            )
        endpoint = _required(params, "XksProxyUriEndpoint")
        self._check_endpoint(endpoint)
        uri_path = _required(params, "XksProxyUriPath")
        if len(uri_path) > 128 or not URI_PATH_PATTERN.fullmatch(uri_path):
            raise errors.validation(
                "XksProxyUriPath must match "
                "^(/[a-zA-Z0-9/_-]+/kms/xks/v\\d{1,2})$|^(/kms/xks/v\\d{1,2})$"
            )
        access_key_id, secret = self._check_credential(
            params.get("XksProxyAuthenticationCredential")
        )
        if any(
            (s.endpoint, s.uri_path) == (endpoint, uri_path) for s in self.state.key_stores.values()
        ):
            raise KmsError(
                "XksProxyUriInUseException",
                "The combination of the XksProxyUriEndpoint and XksProxyUriPath is already in use.",
            )
        store = KeyStore(
            f"cks-{uuid.uuid4().hex[:17]}",
            name,
            endpoint,
            uri_path,
            access_key_id,
            secret,
            created=time.time(),
        )
        # For a public endpoint, AWS KMS tests the connection when the store is created.
        await self._verify_proxy(store, ctx, "CreateCustomKeyStore")
        self.state.save_key_store(store)
        return {"CustomKeyStoreId": store.id}

    async def op_DescribeCustomKeyStores(self, params: dict[str, Any], ctx: Context) -> Any:
        stores = list(self.state.key_stores.values())
        if params.get("CustomKeyStoreId"):
            stores = [self._store(params["CustomKeyStoreId"])]
        elif params.get("CustomKeyStoreName"):
            stores = [s for s in stores if s.name == params["CustomKeyStoreName"]]
            if not stores:
                raise KmsError(
                    "CustomKeyStoreNotFoundException",
                    f"Custom key store '{params['CustomKeyStoreName']}' does not exist.",
                )
        described = []
        for store in stores:
            entry: dict[str, Any] = {
                "CustomKeyStoreId": store.id,
                "CustomKeyStoreName": store.name,
                "ConnectionState": store.state,
                "CreationDate": store.created,
                "CustomKeyStoreType": EXTERNAL,
                "XksProxyConfiguration": {
                    "Connectivity": store.connectivity,
                    "AccessKeyId": store.access_key_id,
                    "UriEndpoint": store.endpoint,
                    "UriPath": store.uri_path,
                },
            }
            if store.error_code:
                entry["ConnectionErrorCode"] = store.error_code
            described.append(entry)
        return {"CustomKeyStores": described, "Truncated": False}

    async def op_ConnectCustomKeyStore(self, params: dict[str, Any], ctx: Context) -> Any:
        store = self._store(_required(params, "CustomKeyStoreId"))
        if store.state in ("CONNECTED", "CONNECTING"):
            return {}
        if store.state != "DISCONNECTED":
            raise KmsError(
                "CustomKeyStoreInvalidStateException",
                f"Custom key store '{store.id}' is {store.state}; disconnect it first.",
            )
        store.state, store.error_code = "CONNECTING", None
        self.state.save_key_store(store)
        task = asyncio.create_task(self._connect(store, ctx))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return {}

    async def _connect(self, store: KeyStore, ctx: Context) -> None:
        try:
            await self.xks.health(self._proxy(store, ctx), "ConnectCustomKeyStore")
        except ProxyCallError as error:
            store.state = "FAILED"
            store.error_code = errors.CONNECTION_ERROR_CODES.get(
                error.failure, "XKS_PROXY_INVALID_RESPONSE"
            )
        else:
            store.state = "CONNECTED"
        self.state.save_key_store(store)

    async def op_DisconnectCustomKeyStore(self, params: dict[str, Any], ctx: Context) -> Any:
        store = self._store(_required(params, "CustomKeyStoreId"))
        store.state = "DISCONNECTING"
        self.state.save_key_store(store)
        store.state, store.error_code = "DISCONNECTED", None
        self.state.save_key_store(store)
        return {}

    async def op_UpdateCustomKeyStore(self, params: dict[str, Any], ctx: Context) -> Any:
        store = self._store(_required(params, "CustomKeyStoreId"))
        changes_needing_disconnect = [
            name
            for name in ("XksProxyUriEndpoint", "XksProxyUriPath", "XksProxyConnectivity")
            if params.get(name) is not None
        ]
        if changes_needing_disconnect and store.state != "DISCONNECTED":
            raise KmsError(
                "CustomKeyStoreInvalidStateException",
                "Disconnect the custom key "
                f"store to change {', '.join(changes_needing_disconnect)}.",
            )
        updated = KeyStore(**{**store.__dict__})
        if params.get("NewCustomKeyStoreName"):
            updated.name = params["NewCustomKeyStoreName"]
        if params.get("XksProxyUriEndpoint"):
            self._check_endpoint(params["XksProxyUriEndpoint"])
            updated.endpoint = params["XksProxyUriEndpoint"]
        if params.get("XksProxyUriPath"):
            if not URI_PATH_PATTERN.fullmatch(params["XksProxyUriPath"]):
                raise errors.validation("XksProxyUriPath is not valid")
            updated.uri_path = params["XksProxyUriPath"]
        if params.get("XksProxyAuthenticationCredential") is not None:
            updated.access_key_id, updated.secret = self._check_credential(
                params["XksProxyAuthenticationCredential"]
            )
        if store.state == "CONNECTED":
            await self._verify_proxy(updated, ctx, "UpdateCustomKeyStore")
        self.state.save_key_store(updated)
        return {}

    async def op_DeleteCustomKeyStore(self, params: dict[str, Any], ctx: Context) -> Any:
        store = self._store(_required(params, "CustomKeyStoreId"))
        if store.state != "DISCONNECTED":
            raise KmsError(
                "CustomKeyStoreInvalidStateException",
                "Disconnect the custom key store before deleting it.",
            )
        if any(key.key_store_id == store.id for key in self.state.keys.values()):
            raise KmsError(
                "CustomKeyStoreHasCMKsException",
                "Delete the KMS keys in the custom key store first.",
            )
        self.state.delete_key_store(store.id)
        return {}

    # -- keys -----------------------------------------------------------------------------------
    async def op_CreateKey(self, params: dict[str, Any], ctx: Context) -> Any:
        if (
            params.get("KeyUsage", "ENCRYPT_DECRYPT") != "ENCRYPT_DECRYPT"
            or params.get("KeySpec", params.get("CustomerMasterKeySpec", "SYMMETRIC_DEFAULT"))
            != "SYMMETRIC_DEFAULT"
        ):
            raise KmsError(
                "UnsupportedOperationException",
                "The emulator supports symmetric encryption keys only.",
            )
        origin = params.get("Origin", AWS_KMS)
        key_id = str(uuid.uuid4())
        key = Key(
            id=key_id,
            arn=f"arn:aws:kms:{ctx.region}:{ctx.account}:key/{key_id}",
            account=ctx.account,
            region=ctx.region,
            origin=origin,
            material=b64(AESGCM.generate_key(256)),
            description=params.get("Description", ""),
            created=time.time(),
        )
        if origin == EXTERNAL:
            await self._attach_external_key(key, params, ctx)
        elif origin != AWS_KMS:
            raise KmsError("UnsupportedOperationException", f"Origin {origin} is not supported.")
        self.state.save_key(key)
        return {"KeyMetadata": self._metadata(key)}

    async def _attach_external_key(self, key: Key, params: dict[str, Any], ctx: Context) -> None:
        store_id = _string(params, "CustomKeyStoreId", required=False)
        xks_key_id = _string(params, "XksKeyId", required=False)
        if not store_id or not xks_key_id:
            raise errors.validation(
                "CustomKeyStoreId and XksKeyId are required for Origin EXTERNAL_KEY_STORE"
            )
        store = self._store(store_id)
        if store.state != "CONNECTED":
            raise KmsError("CustomKeyStoreInvalidStateException", errors.NOT_CONNECTED)
        if any(
            k.key_store_id == store.id and k.xks_key_id == xks_key_id
            for k in self.state.keys.values()
        ):
            raise KmsError(
                "XksKeyAlreadyInUseException",
                f"The external key {xks_key_id} is "
                "already associated with a KMS key in this key store.",
            )
        try:
            metadata = await self.xks.key_metadata(
                self._proxy(store, ctx), xks_key_id, Caller(ctx.principal_arn, "CreateKey")
            )
        except ProxyCallError as error:
            raise errors.for_create_key(error) from None
        problem = None
        if metadata.get("keySpec") != "AES_256":
            problem = "The key spec of the external key must be AES_256."
        elif not {"ENCRYPT", "DECRYPT"} <= set(metadata.get("keyUsage") or []):
            problem = "The key usage of the external key must include ENCRYPT and DECRYPT."
        elif metadata.get("keyStatus") != "ENABLED":
            problem = "The status of the external key must be ENABLED."
        if problem:
            raise KmsError("XksKeyInvalidConfigurationException", problem)
        key.key_store_id, key.xks_key_id = store.id, xks_key_id

    async def op_DescribeKey(self, params: dict[str, Any], ctx: Context) -> Any:
        return {"KeyMetadata": self._metadata(self._key(_required(params, "KeyId"), ctx))}

    async def op_ListKeys(self, params: dict[str, Any], ctx: Context) -> Any:
        keys = [{"KeyId": k.id, "KeyArn": k.arn} for k in self.state.keys.values()]
        return {"Keys": keys, "Truncated": False}

    def _change_state(self, params: dict[str, Any], ctx: Context, new_state: str) -> Key:
        key = self._key(_required(params, "KeyId"), ctx)
        if key.state == "PendingDeletion":
            raise KmsError("KMSInvalidStateException", f"{key.arn} is pending deletion.")
        key.state = new_state
        self.state.save_key(key)
        return key

    async def op_EnableKey(self, params: dict[str, Any], ctx: Context) -> Any:
        self._change_state(params, ctx, "Enabled")
        return {}

    async def op_DisableKey(self, params: dict[str, Any], ctx: Context) -> Any:
        self._change_state(params, ctx, "Disabled")
        return {}

    async def op_ScheduleKeyDeletion(self, params: dict[str, Any], ctx: Context) -> Any:
        days = params.get("PendingWindowInDays", 30)
        if not isinstance(days, int) or not 7 <= days <= 30:
            raise errors.validation("PendingWindowInDays must be between 7 and 30")
        key = self._change_state(params, ctx, "PendingDeletion")
        key.deletion_date, key.pending_window_days = time.time() + days * 86_400, days
        self.state.save_key(key)
        return {
            "KeyId": key.arn,
            "DeletionDate": key.deletion_date,
            "KeyState": "PendingDeletion",
            "PendingWindowInDays": days,
        }

    async def op_CancelKeyDeletion(self, params: dict[str, Any], ctx: Context) -> Any:
        key = self._key(_required(params, "KeyId"), ctx)
        if key.state != "PendingDeletion":
            raise KmsError("KMSInvalidStateException", f"{key.arn} is not pending deletion.")
        key.state, key.deletion_date, key.pending_window_days = "Disabled", None, None
        self.state.save_key(key)
        return {"KeyId": key.arn}

    def _rotation_key(self, params: dict[str, Any], ctx: Context) -> Key:
        key = self._key(_required(params, "KeyId"), ctx)
        if key.key_store_id is not None:
            raise KmsError(
                "UnsupportedOperationException",
                f"{key.arn} is in a custom key store; automatic rotation is not supported for it.",
            )
        return key

    async def op_GetKeyRotationStatus(self, params: dict[str, Any], ctx: Context) -> Any:
        return {"KeyRotationEnabled": self._rotation_key(params, ctx).rotation_enabled}

    async def op_EnableKeyRotation(self, params: dict[str, Any], ctx: Context) -> Any:
        key = self._rotation_key(params, ctx)
        key.rotation_enabled = True
        self.state.save_key(key)
        return {}

    async def op_DisableKeyRotation(self, params: dict[str, Any], ctx: Context) -> Any:
        key = self._rotation_key(params, ctx)
        key.rotation_enabled = False
        self.state.save_key(key)
        return {}

    # -- aliases ----------------------------------------------------------------------------------
    async def op_CreateAlias(self, params: dict[str, Any], ctx: Context) -> Any:
        name = _required(params, "AliasName")
        if not re.fullmatch(r"alias/[a-zA-Z0-9/_-]{1,250}", name) or name.startswith("alias/aws/"):
            raise errors.validation(f"Alias name {name} is not valid")
        if name in self.state.aliases:
            raise KmsError(
                "AlreadyExistsException",
                f"An alias with the name "
                f"arn:aws:kms:{ctx.region}:{ctx.account}:{name} already exists",
            )
        target = _required(params, "TargetKeyId")
        if "alias/" in target:
            raise errors.validation("TargetKeyId must be a key id or key ARN")
        self.state.set_alias(name, self._key(target, ctx).id)
        return {}

    async def op_ListAliases(self, params: dict[str, Any], ctx: Context) -> Any:
        only = self._key(params["KeyId"], ctx).id if params.get("KeyId") else None
        aliases = [
            {
                "AliasName": name,
                "AliasArn": f"arn:aws:kms:{ctx.region}:{ctx.account}:{name}",
                "TargetKeyId": key_id,
            }
            for name, key_id in sorted(self.state.aliases.items())
            if only is None or key_id == only
        ]
        return {"Aliases": aliases, "Truncated": False}

    async def op_DeleteAlias(self, params: dict[str, Any], ctx: Context) -> Any:
        name = _required(params, "AliasName")
        if name not in self.state.aliases:
            raise errors.not_found(f"Alias arn:aws:kms:{ctx.region}:{ctx.account}:{name}")
        self.state.delete_alias(name)
        return {}

    # -- cryptography -----------------------------------------------------------------------------
    async def op_Encrypt(self, params: dict[str, Any], ctx: Context) -> Any:
        key = self._key(_required(params, "KeyId"), ctx)
        plaintext = _blob(params, "Plaintext")
        if not 1 <= len(plaintext) <= MAX_PLAINTEXT:
            raise errors.validation(
                "1 validation error detected: Value at 'plaintext' failed "
                "to satisfy constraint: Member must have length less than "
                "or equal to 4096"
            )
        blob = await self._seal(key, plaintext, _context(params), ctx, "Encrypt")
        return {
            "CiphertextBlob": b64(blob),
            "KeyId": key.arn,
            "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        }

    async def op_Decrypt(self, params: dict[str, Any], ctx: Context) -> Any:
        key, plaintext = await self._open(
            _blob(params, "CiphertextBlob"), _context(params), ctx, "Decrypt", params.get("KeyId")
        )
        return {
            "KeyId": key.arn,
            "Plaintext": b64(plaintext),
            "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        }

    async def op_ReEncrypt(self, params: dict[str, Any], ctx: Context) -> Any:
        source, plaintext = await self._open(
            _blob(params, "CiphertextBlob"),
            _context(params, "SourceEncryptionContext"),
            ctx,
            "ReEncrypt",
            params.get("SourceKeyId"),
        )
        destination = self._key(_required(params, "DestinationKeyId"), ctx)
        blob = await self._seal(
            destination,
            plaintext,
            _context(params, "DestinationEncryptionContext"),
            ctx,
            "ReEncrypt",
        )
        return {
            "CiphertextBlob": b64(blob),
            "SourceKeyId": source.arn,
            "KeyId": destination.arn,
            "SourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
            "DestinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        }

    @staticmethod
    def _data_key_length(params: dict[str, Any]) -> int:
        spec, count = params.get("KeySpec"), params.get("NumberOfBytes")
        if (spec is None) == (count is None):
            raise errors.validation("Specify either KeySpec or NumberOfBytes")
        if spec is not None:
            if spec not in ("AES_256", "AES_128"):
                raise errors.validation("KeySpec must be AES_256 or AES_128")
            return 32 if spec == "AES_256" else 16
        if not isinstance(count, int) or not 1 <= count <= 1024:
            raise errors.validation("NumberOfBytes must be between 1 and 1024")
        return count

    async def _data_key(self, params: dict[str, Any], ctx: Context, operation: str) -> Any:
        key = self._key(_required(params, "KeyId"), ctx)
        data_key = os.urandom(self._data_key_length(params))
        # The CDIV protects what the caller keeps: the encrypted data key (xks-spec §5.3).
        blob = await self._seal(key, data_key, _context(params), ctx, operation, integrity=True)
        return {"CiphertextBlob": b64(blob), "KeyId": key.arn}, data_key

    async def op_GenerateDataKey(self, params: dict[str, Any], ctx: Context) -> Any:
        answer, data_key = await self._data_key(params, ctx, "GenerateDataKey")
        return {**answer, "Plaintext": b64(data_key)}

    async def op_GenerateDataKeyWithoutPlaintext(self, params: dict[str, Any], ctx: Context) -> Any:
        answer, _ = await self._data_key(params, ctx, "GenerateDataKeyWithoutPlaintext")
        return answer

    async def op_GenerateRandom(self, params: dict[str, Any], ctx: Context) -> Any:
        count = params.get("NumberOfBytes")
        if not isinstance(count, int) or not 1 <= count <= 1024:
            raise errors.validation("NumberOfBytes must be between 1 and 1024")
        return {"Plaintext": b64(os.urandom(count))}
