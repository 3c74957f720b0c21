"""The emulator's SQLite state opens databases written by earlier versions: keys stored under
their id with one inner-layer material, aliases without a region, key stores without one."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from xks_proxy.kms_emulator.state import KeyState, Origin, State

KEY_ID = "0b7c9d8e-1f2a-4b3c-8d4e-5f6a7b8c9d0e"
ARN = f"arn:aws:kms:eu-west-1:111122223333:key/{KEY_ID}"


def test_a_database_from_before_regions_and_rotation_opens(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE key_stores (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
        CREATE TABLE keys (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
        CREATE TABLE aliases (name TEXT PRIMARY KEY, key_id TEXT NOT NULL);
    """)
    store = {"id": "cks-1", "name": "dev", "endpoint": "http://127.0.0.1:1",
             "uri_path": "/kms/xks/v1", "access_key_id": "A" * 20, "secret": "s" * 43,
             "state": "CONNECTED"}  # fmt: skip
    key = {"id": KEY_ID, "arn": ARN, "account": "111122223333", "region": "eu-west-1",
           "origin": "EXTERNAL_KEY_STORE", "material": "AAAA", "state": "Enabled",
           "key_store_id": "cks-1", "xks_key_id": "key-1"}  # fmt: skip
    old.execute("INSERT INTO key_stores VALUES (?, ?)", ("cks-1", json.dumps(store)))
    old.execute("INSERT INTO keys VALUES (?, ?)", (KEY_ID, json.dumps(key)))
    old.execute("INSERT INTO aliases VALUES (?, ?)", ("alias/app", KEY_ID))
    old.commit()
    old.close()

    state = State(path)
    loaded = state.keys[ARN]
    assert (loaded.origin, loaded.state) == (Origin.EXTERNAL_KEY_STORE, KeyState.ENABLED)
    assert list(loaded.materials.values()) == ["AAAA"] and loaded.current_material
    assert state.key_stores["cks-1"].region == "eu-west-1"  # the region of its keys
    assert state.aliases[("eu-west-1", "alias/app")].key_id == KEY_ID
    state.close()
    reopened = State(path)  # the upgrade was written back: once, under the ARN
    assert list(reopened.keys) == [ARN] and ("eu-west-1", "alias/app") in reopened.aliases
    rows = sqlite3.connect(path).execute("SELECT id FROM keys").fetchall()
    assert rows == [(ARN,)]
    reopened.close()
