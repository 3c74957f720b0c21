"""The CLI's side of the admin API: ``--admin-url URL --token-file F`` on ``keys``,
``credentials`` and ``policy`` make the same calls over HTTP that the API makes locally on the
proxy host.

``RemoteKeys`` has the method names of ``keymgmt.service.KeyManager`` (imports included) and
``RemoteCredentials`` the function names of ``credential_service``, so each CLI command reads
the same either way; ``RemotePolicies`` is the policy endpoints.
The token is read from a file (never argv, which every local user sees in ``ps``) and is never
printed. An https URL is verified against the system's CAs or ``--admin-cacert``. An API error
becomes ``CommandError`` with the API's message; a 401/403 also says which.
"""

from __future__ import annotations

import argparse
import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xks_proxy.errors import CommandError, ConfigError

if TYPE_CHECKING:
    # The key import (cryptography, the key store) only for the command that imports keys.
    from xks_proxy.keymgmt.byok import ImportParameters

TIMEOUT_SECONDS = 30
API_PREFIX = "/admin/v1"


@dataclass(frozen=True, slots=True)
class AdminClient:
    base_url: str
    token: str
    context: ssl.SSLContext | None = None

    @classmethod
    def from_options(cls, url: str, token_file: str | None, cacert: str | None) -> AdminClient:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("--admin-url: an http(s)://host:port URL of the admin API")
        if token_file is None:
            raise ConfigError("--admin-url needs --token-file (a file holding the bearer token)")
        try:
            token = Path(token_file).read_text().strip()
        except OSError as error:
            raise ConfigError(f"--token-file {token_file}: {error.strerror}") from None
        if not token:
            raise ConfigError(f"--token-file {token_file}: empty")
        context = ssl.create_default_context(cafile=cacert) if parts.scheme == "https" else None
        return cls(url.rstrip("/"), token, context)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 (see below)
            self.base_url + API_PREFIX + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )  # fmt: skip
        try:
            # The scheme is http or https (checked in from_options), never file: or custom.
            with urllib.request.urlopen(  # noqa: S310
                request, timeout=TIMEOUT_SECONDS, context=self.context
            ) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise CommandError(f"admin API: {error.code} {_message(error)}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise CommandError(f"admin API at {self.base_url} unreachable: {reason}") from None

    def key_store(self, name: str | None) -> str:
        """The named key store, or the only one the API lists."""
        if name is not None:
            return urllib.parse.quote(name, safe="")
        stores = self.call("GET", "/key-stores")["keyStores"]
        if len(stores) != 1:
            raise ConfigError("several key stores are configured: name one with --key-store")
        return urllib.parse.quote(stores[0]["name"], safe="")


def _message(error: urllib.error.HTTPError) -> str:
    try:
        document = json.loads(error.read())
        return str(document.get("message", document))
    except (ValueError, AttributeError):
        return error.reason


def add_admin_url_options(parser: argparse.ArgumentParser) -> None:
    """``--config`` or ``--admin-url``/``--token-file``: local files or the admin API."""
    parser.add_argument("--config", help="the xks-proxy.toml file (local mode)")
    parser.add_argument("--admin-url", help="run through the admin API at this URL instead")
    parser.add_argument("--token-file", help="with --admin-url: a file holding the bearer token")
    parser.add_argument("--admin-cacert", help="with an https --admin-url: its CA bundle")


class RemoteKeys:
    """``KeyManager``'s actions over the API; keys come back as ``describe_key`` rows."""

    def __init__(self, client: AdminClient, key_store: str | None) -> None:
        self._client = client
        self._base = f"/key-stores/{client.key_store(key_store)}/keys"

    def _key(self, key_id: str, action: str) -> dict[str, Any]:
        quoted = urllib.parse.quote(key_id, safe="")
        result: dict[str, Any] = self._client.call("POST", f"{self._base}/{quoted}/{action}")
        return result

    def keys(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._client.call("GET", self._base)["keys"]
        return rows

    def create(self, key_id: str, usage: frozenset[str], origin: str = "proxy") -> None:
        self._client.call(
            "POST", self._base, {"keyId": key_id, "keyUsage": sorted(usage), "origin": origin}
        )

    def create_external(self, key_id: str, usage: frozenset[str]) -> None:
        self.create(key_id, usage, "external")

    def import_parameters(self, key_id: str, algorithm: str, spec: str) -> ImportParameters:
        from xks_proxy.keymgmt.byok import ImportParameters

        quoted = urllib.parse.quote(key_id, safe="")
        answer = self._client.call(
            "POST", f"{self._base}/{quoted}/import-parameters",
            {"wrappingAlgorithm": algorithm, "wrappingKeySpec": spec},
        )  # fmt: skip
        return ImportParameters(
            answer["publicKey"].encode(),
            answer["importToken"],
            datetime.fromisoformat(answer["parametersValidTo"]),
        )

    def import_material(
        self, key_id: str, wrapped: bytes, token: str, valid_to: datetime | None = None
    ) -> None:
        body = {
            "encryptedKeyMaterial": base64.b64encode(wrapped).decode(),
            "importToken": token.strip(),
        }
        if valid_to is not None:
            body["validTo"] = valid_to.isoformat()
        self._client.call(
            "POST", f"{self._base}/{urllib.parse.quote(key_id, safe='')}/import-material", body
        )

    def delete_material(self, key_id: str) -> None:
        self._key(key_id, "delete-material")

    def enable(self, key_id: str) -> None:
        self._key(key_id, "enable")

    def disable(self, key_id: str) -> None:
        self._key(key_id, "disable")

    def rotate(self, key_id: str) -> int:
        versions: int = self._key(key_id, "rotate")["versions"]
        return versions

    def schedule_deletion(self, key_id: str, days: int) -> datetime:
        quoted = urllib.parse.quote(key_id, safe="")
        row = self._client.call(
            "POST", f"{self._base}/{quoted}/schedule-deletion", {"pendingWindowInDays": days}
        )
        return datetime.fromisoformat(row["deletionDate"])

    def cancel_deletion(self, key_id: str) -> None:
        self._key(key_id, "cancel-deletion")


class RemoteCredentials:
    """``credential_service``'s actions over the API."""

    def __init__(self, client: AdminClient, key_store: str | None) -> None:
        self._client = client
        self._base = f"/key-stores/{client.key_store(key_store)}/credentials"

    def create(self) -> dict[str, str]:
        document: dict[str, str] = self._client.call("POST", self._base)
        return document

    def add(self, access_key_id: str, secret: str) -> tuple[str, bool]:
        path = f"{self._base}/{urllib.parse.quote(access_key_id, safe='')}"
        answer = self._client.call("PUT", path, {"secretAccessKey": secret})
        return answer["keyStore"], bool(answer["added"])

    def list_credentials(self) -> list[dict[str, str]]:
        rows: list[dict[str, str]] = self._client.call("GET", self._base)["credentials"]
        return rows

    def revoke(self, access_key_id: str, force: bool) -> str:
        path = f"{self._base}/{urllib.parse.quote(access_key_id, safe='')}"
        answer = self._client.call("DELETE", path + ("?force=true" if force else ""))
        name: str = answer["keyStore"]
        return name


class RemotePolicies:
    """A key store's secondary-authorization policy over the API (``admin/api_policies.py``)."""

    def __init__(self, client: AdminClient, key_store: str | None) -> None:
        self._client = client
        self._base = f"/key-stores/{client.key_store(key_store)}/policy"

    def get(self) -> dict[str, Any]:
        answer: dict[str, Any] = self._client.call("GET", self._base)
        return answer

    def put(self, text: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._client.call("PUT", self._base, {"policies": text})
        return answer

    def validate(self, text: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._client.call(
            "POST", self._base + "/validate", {"policies": text}
        )
        return answer

    def explain(self, request: Any) -> dict[str, Any]:
        """``request``: a request document (``authz/explain.py``) as the body."""
        answer: dict[str, Any] = self._client.call("POST", self._base + "/explain", request)
        return answer
