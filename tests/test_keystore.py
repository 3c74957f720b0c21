"""The key store itself, on SQLite and on a real PostgreSQL: one row format, revisions,
migrations, concurrency and a clear error when the database is gone."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from xks_proxy.backends.base import DECRYPT, ENCRYPT
from xks_proxy.config import parse_config
from xks_proxy.errors import ConfigError
from xks_proxy.keystore.connections import connect_postgres
from xks_proxy.keystore.location import StoreLocation
from xks_proxy.keystore.records import SealedVersion
from xks_proxy.keystore.schema import SCHEMA_VERSION
from xks_proxy.keystore.sealing import KekMismatchError, SoftwareKeySealer
from xks_proxy.keystore.store import (
    KeyDatabase,
    KeyExistsError,
    KeyStoreUnavailableError,
    UnknownKeyError,
)

BOTH = frozenset({ENCRYPT, DECRYPT})


def execute_raw(location: str, sql: str) -> None:
    """SQL on the store's database behind the store's back, as an attacker or operator might."""
    parsed = StoreLocation.parse(location)
    if parsed.kind == "sqlite":
        with sqlite3.connect(parsed.target) as db:
            db.execute(sql)
    else:
        with psycopg.connect(parsed.target, autocommit=True) as db:
            db.execute(sql.encode())


def test_a_reader_gets_exactly_the_keys_written_after_its_revision(location: str) -> None:
    kek = os.urandom(32)
    writer, reader = KeyDatabase(location, kek), KeyDatabase(location, kek)
    try:
        writer.create_key("first", BOTH)
        everything = reader.changes_since(-1)
        assert everything is not None and everything.complete
        assert [k.key_id for k in everything.keys] == ["first"]
        assert reader.changes_since(everything.revision) is None

        writer.create_key("second", frozenset({ENCRYPT}))
        assert writer.rotate_key("first") == 2
        writer.set_enabled("second", False)
        changes = reader.changes_since(everything.revision)
        assert changes is not None and not changes.complete
        by_id = {k.key_id: k for k in changes.keys}
        assert sorted(by_id) == ["first", "second"]
        assert sorted(by_id["first"].versions) == [1, 2]
        assert not by_id["second"].enabled and by_id["second"].usage == {ENCRYPT}
        assert changes.revision == reader.revision() > everything.revision
    finally:
        writer.close()
        reader.close()


def test_every_version_unseals_and_versions_differ(location: str) -> None:
    database = KeyDatabase(location, os.urandom(32))
    try:
        database.create_key("k", BOTH)
        database.rotate_key("k")
        (key,) = database.load()
        assert len(key.versions[1]) == len(key.versions[2]) == 32
        assert key.versions[1] != key.versions[2]
        with pytest.raises(KeyExistsError):
            database.create_key("k", BOTH)
        with pytest.raises(UnknownKeyError):
            database.rotate_key("absent")
        with pytest.raises(UnknownKeyError):
            database.set_enabled("absent", False)
    finally:
        database.close()


def test_a_row_moved_to_another_key_does_not_unseal(location: str) -> None:
    kek = os.urandom(32)
    database = KeyDatabase(location, kek)
    try:
        database.create_key("alice", BOTH)
        database.create_key("bob", BOTH)
        # Give bob alice's sealed material: the AAD binds the key id, so it must not open.
        execute_raw(
            location,
            "UPDATE key_versions SET sealed = (SELECT sealed FROM key_versions "
            "WHERE key_id = 'alice'), nonce = (SELECT nonce FROM key_versions "
            "WHERE key_id = 'alice') WHERE key_id = 'bob'",
        )
        with pytest.raises(ConfigError, match="key bob version 1 does not decrypt"):
            database.load()
    finally:
        database.close()


def test_the_wrong_kek_is_named_as_the_problem(location: str) -> None:
    first = KeyDatabase(location, os.urandom(32))
    first.create_key("k", BOTH)
    check_value = first.sealer.check_value()
    first.close()
    # Refused at open, naming the KEK the store records, not with garbage row by row.
    with pytest.raises(
        KekMismatchError, match=f"sealed under a software KEK with check value {check_value}"
    ):
        KeyDatabase(location, os.urandom(32))


def test_a_store_from_a_newer_xks_proxy_is_refused(location: str) -> None:
    KeyDatabase(location, os.urandom(32)).close()
    execute_raw(location, f"UPDATE store_meta SET schema_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigError, match="newer xks-proxy"):
        KeyDatabase(location, os.urandom(32))


def test_a_file_of_the_first_schema_is_migrated_in_place(tmp_path: Path) -> None:
    """Files made by ``init`` before schema versions existed keep working, keys and all."""
    path = tmp_path / "keys.db"
    kek = os.urandom(32)
    material = os.urandom(32)
    sealed = SoftwareKeySealer(kek, str(path)).seal("old-key", 1, material)
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE keys (key_id TEXT PRIMARY KEY, usage TEXT NOT NULL, "
            "enabled INTEGER NOT NULL, internal INTEGER NOT NULL DEFAULT 0, "
            "created_at TEXT NOT NULL);"
            "CREATE TABLE key_versions (key_id TEXT NOT NULL REFERENCES keys(key_id), "
            "version INTEGER NOT NULL, nonce BLOB NOT NULL, sealed BLOB NOT NULL, "
            "created_at TEXT NOT NULL, PRIMARY KEY (key_id, version));"
        )
        db.execute("INSERT INTO keys VALUES ('old-key', 'DECRYPT,ENCRYPT', 1, 0, '2025-01-01')")
        db.execute(
            "INSERT INTO key_versions VALUES ('old-key', 1, ?, ?, '2025-01-01')",
            (sealed.nonce, sealed.sealed),
        )
    database = KeyDatabase(path, kek)
    try:
        (key,) = database.load()
        assert key.key_id == "old-key" and key.usage == BOTH
        assert key.versions == {1: material}
        assert database.rotate_key("old-key") == 2
    finally:
        database.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT schema_version FROM store_meta").fetchone() == (SCHEMA_VERSION,)


def test_concurrent_writers_on_postgresql_never_collide(postgres_url: str) -> None:
    kek = os.urandom(32)
    first = KeyDatabase(postgres_url, kek)
    first.create_key("busy", BOTH)
    first.close()
    versions: list[int] = []
    errors: list[BaseException] = []

    def rotate_some() -> None:
        database = KeyDatabase(postgres_url, kek)
        try:
            for _ in range(5):
                versions.append(database.rotate_key("busy"))
        except BaseException as error:
            errors.append(error)
        finally:
            database.close()

    threads = [threading.Thread(target=rotate_some) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(versions) == list(range(2, 22))
    database = KeyDatabase(postgres_url, kek)
    try:
        (key,) = database.load()
        assert sorted(key.versions) == list(range(1, 22))
    finally:
        database.close()


def test_an_unreachable_postgresql_is_a_clear_error_without_the_password(
    reserve_port: Callable[[], int],
) -> None:
    port = reserve_port()  # held and never listened on: connections are refused
    url = f"postgresql://xks:hunter2secret@127.0.0.1:{port}/keys"
    with pytest.raises(KeyStoreUnavailableError) as raised:
        KeyDatabase(url, os.urandom(32))
    message = str(raised.value)
    assert "is unreachable" in message
    assert f"postgresql://xks@127.0.0.1:{port}/keys" in message
    assert "hunter2secret" not in message


def _software_config(backend_lines: str, environ: dict[str, str] | None = None) -> object:
    document = (
        "[backends.local]\n"
        'type = "software"\n'
        f'kek = "{"A" * 43}="\n'
        f"{backend_lines}\n"
        "[[key_stores]]\n"
        'name = "dev"\n'
        'uri_path = "/kms/xks/v1"\n'
        'region = "us-east-1"\n'
        'backend = "local"\n'
        'keys = ["*"]\n'
        "[[key_stores.credentials]]\n"
        'access_key_id = "AKIAIOSFODNN7EXAMPLEA"\n'
        f'secret_access_key = "{"s" * 43}"\n'
    )
    import tomllib

    return parse_config(tomllib.loads(document), Path("/etc/xks-proxy.toml"), environ or {})


def test_database_url_may_come_from_the_environment() -> None:
    url = "postgresql://xks:pw@db.internal:5432/keys"
    config = _software_config('database_url = "env:KEYS_URL"', {"KEYS_URL": url})
    backend = config.backends["local"]  # type: ignore[attr-defined]
    assert backend.database_url == url and backend.path is None
    assert "pw" not in repr(backend)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('path = "keys.db"\ndatabase_url = "postgresql://h/db"', "exactly one of path or"),
        ("", "exactly one of path or database_url"),
        ('database_url = "mysql://u:topsecret@h/db"', "must be a postgresql:// URL"),
        ('database_url = "env:MISSING"', "MISSING is not set"),
        ('path = "keys.db"\nkey_cache_size = 1', "key_cache_size: must be between"),
    ],
)
def test_bad_store_settings_are_named(lines: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        _software_config(lines)
    assert "topsecret" not in str(raised.value)


def test_sealed_rows_copy_between_kinds_unchanged(tmp_path: Path, postgres_url: str) -> None:
    """The same row format in both: a version sealed in SQLite opens from PostgreSQL."""
    kek = os.urandom(32)
    sqlite_store = KeyDatabase(tmp_path / "keys.db", kek)
    postgres_store = KeyDatabase(postgres_url, kek)
    try:
        sqlite_store.create_key("moving", BOTH)
        records = [r for r in sqlite_store.records() if not r.internal]
        assert postgres_store.copy_records(records) == 1
        (moved,) = [r for r in postgres_store.records() if r.key_id == "moving"]
        assert moved.versions == records[0].versions
        assert isinstance(moved.versions[1], SealedVersion)
        assert postgres_store.load()[0].versions == sqlite_store.load()[0].versions
        with pytest.raises(KeyExistsError, match="moving"):
            postgres_store.copy_records(records)
    finally:
        sqlite_store.close()
        postgres_store.close()


def test_a_silent_network_failure_is_bounded_by_tcp_settings(postgres_url: str) -> None:
    """Keepalives and a TCP user timeout, so a partition fails a query within seconds."""
    connection = connect_postgres(StoreLocation.parse(postgres_url + "?keepalives_idle=7200"))
    try:
        parameters = connection.info.get_parameters()
    finally:
        connection.close()
    assert parameters["keepalives_idle"] == "5"
    assert parameters["tcp_user_timeout"] == "10000"
    assert parameters["connect_timeout"] == "5"


def test_close_waits_for_a_query_running_in_another_thread(tmp_path: Path) -> None:
    """A proxy's sweeper and follower query from threads; closing the SQLite connection under a
    running statement crashed the process. Every query holds the store's lock while it runs, so
    close must wait for it."""
    database = KeyDatabase(f"sqlite:{tmp_path / 'keys.db'}", os.urandom(32))
    in_query, release = threading.Event(), threading.Event()

    def long_query() -> None:
        with database._lock:  # what every query holds while it runs
            in_query.set()
            release.wait(10)
            database.revision()

    worker = threading.Thread(target=long_query)
    worker.start()
    assert in_query.wait(10)
    closer = threading.Thread(target=database.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive(), "close went ahead under a running query"
    release.set()
    worker.join(10)
    closer.join(10)
    assert not closer.is_alive()
    with pytest.raises(ConfigError, match="closed"):
        database.revision()
