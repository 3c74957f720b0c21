"""Shared fixtures: a real deployment made by ``init``, and a real HTTP server on loopback."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from tests.xks_client import XksClient
from xks_proxy.backends.base import DECRYPT, ENCRYPT
from xks_proxy.config import Config, load_config
from xks_proxy.keystore.store import KeyDatabase
from xks_proxy.runtime import ProxyRuntime
from xks_proxy.scaffold import scaffold
from xks_proxy.web.app import create_app

VECTORS_PATH = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "xks-vectors.json"

# Keys every API test can rely on, with the usage and state their names say.
KEY_BOTH = "key-both"
KEY_ENCRYPT_ONLY = "key-encrypt-only"
KEY_DECRYPT_ONLY = "key-decrypt-only"
KEY_NO_USAGE = "key-no-usage"
KEY_DISABLED = "key-disabled"
KEY_OUTSIDE_STORE = "other-key"


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(VECTORS_PATH.read_text())
    return document


@dataclass
class Deployment:
    directory: Path
    config: Config

    @property
    def config_path(self) -> Path:
        return self.config.path


def make_deployment(directory: Path, **config_changes: str) -> Deployment:
    made = scaffold(directory, key_id=KEY_BOTH, port=0, metrics_port=0)
    text = made.config_path.read_text().replace('keys = ["*"]', 'keys = ["key-*"]')
    for old, new in config_changes.items():
        text = text.replace(old, new)
    made.config_path.write_text(text)
    config = load_config(made.config_path)
    backend = config.backends["local"]
    database = KeyDatabase(backend.path, backend.kek)
    try:
        database.create_key(KEY_ENCRYPT_ONLY, frozenset({ENCRYPT}))
        database.create_key(KEY_DECRYPT_ONLY, frozenset({DECRYPT}))
        database.create_key(KEY_NO_USAGE, frozenset())
        database.create_key(KEY_DISABLED, frozenset({ENCRYPT, DECRYPT}))
        database.set_enabled(KEY_DISABLED, False)
        database.create_key(KEY_OUTSIDE_STORE, frozenset({ENCRYPT, DECRYPT}))
    finally:
        database.close()
    return Deployment(directory, config)


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    return make_deployment(tmp_path)


@pytest.fixture
async def runtime_client(
    deployment: Deployment, aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]]
) -> tuple[ProxyRuntime, TestClient[Any, Any]]:
    runtime = ProxyRuntime(deployment.config)
    client = await aiohttp_client(create_app(runtime))
    return runtime, client


@pytest.fixture
def xks(runtime_client: tuple[ProxyRuntime, TestClient[Any, Any]]) -> XksClient:
    runtime, client = runtime_client
    store = runtime.config.key_stores[0]
    return XksClient(client, store.uri_path, store.region, store.credentials[0])


async def json_of(response: ClientResponse) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(await response.read())
    return document
