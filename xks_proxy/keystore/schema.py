"""The key store's schema, versioned, with forward migrations for SQLite and PostgreSQL alike.

``store_meta`` holds the schema version and the store's revision: a counter every write bumps
in its own transaction, which it also stamps on the keys it touched, so a reader asks "what
changed since revision N" instead of reading everything again. A store written by a newer
xks-proxy (a higher schema version) is refused rather than misread. Migrations run in one
transaction under the store's write lock (PostgreSQL: an advisory lock, since several proxies
may start at once), so a half-migrated store cannot exist.

Version 1 is the embedded store of xks-proxy 0.x (files made by ``init`` before this module):
it had no ``store_meta``; such a file is recognised by its ``keys`` table and migrated.
"""

from __future__ import annotations

from xks_proxy.errors import ConfigError
from xks_proxy.keystore.connections import StoreConnection, transaction

SCHEMA_VERSION = 7


def _migrations(blob: str) -> list[list[str]]:
    """``_migrations(...)[n]`` takes a store from schema version n to n + 1."""
    return [
        [
            "CREATE TABLE keys ("
            " key_id TEXT PRIMARY KEY, usage TEXT NOT NULL, enabled INTEGER NOT NULL,"
            " internal INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL)",
            "CREATE TABLE key_versions ("
            " key_id TEXT NOT NULL REFERENCES keys(key_id), version INTEGER NOT NULL,"
            f" nonce {blob} NOT NULL, sealed {blob} NOT NULL, created_at TEXT NOT NULL,"
            " PRIMARY KEY (key_id, version))",
        ],
        [
            "ALTER TABLE keys ADD COLUMN revision BIGINT NOT NULL DEFAULT 0",
            "CREATE INDEX keys_by_revision ON keys (revision)",
        ],
        [
            # Scheduled deletion: the date (ISO 8601, UTC) after which the sweeper purges the
            # key, and a tombstone per purged key so every proxy learns of the purge.
            "ALTER TABLE keys ADD COLUMN deletion_date TEXT",
            "CREATE TABLE deleted_keys ("
            " key_id TEXT PRIMARY KEY, revision BIGINT NOT NULL, deleted_at TEXT NOT NULL)",
            "CREATE INDEX deleted_keys_by_revision ON deleted_keys (revision)",
        ],
        [
            # Imported key material (BYOK, ``keymgmt.byok``): where a key's material comes from
            # ('proxy' made it, 'external' was imported), until when imported material may be
            # used, and a fingerprint of it so only the same material can be imported again.
            "ALTER TABLE keys ADD COLUMN origin TEXT NOT NULL DEFAULT 'proxy'",
            "ALTER TABLE keys ADD COLUMN valid_to TEXT",
            "ALTER TABLE keys ADD COLUMN material_fingerprint TEXT",
            # Sealed import secrets: the store's token-signing key and pending wrapping keys.
            "CREATE TABLE import_secrets ("
            f" name TEXT PRIMARY KEY, key_id TEXT, nonce {blob} NOT NULL, sealed {blob} NOT NULL,"
            " expires_at TEXT)",
        ],
        [
            # Secondary-authorization policies kept in the store (``authorization_policy =
            # "database"``, ``authz/stored.py``): one Cedar text per key store name, stamped
            # with the revision that wrote it, so every proxy's follower sees a put.
            "CREATE TABLE authz_policies ("
            " key_store TEXT PRIMARY KEY, policy TEXT NOT NULL, revision BIGINT NOT NULL,"
            " updated_at TEXT NOT NULL, updated_by TEXT NOT NULL)",
        ],
        [
            # SigV4 credentials of key stores with ``credentials_store = "database"``
            # (``keystore.credentials``): the secret sealed under the KEK, bound to the key store
            # and access key id. A revoked row keeps its id and revision, secret erased (NULL),
            # so every proxy learns of the revocation from ``changes_since``.
            "CREATE TABLE credentials ("
            " access_key_id TEXT PRIMARY KEY, key_store TEXT NOT NULL,"
            f" nonce {blob}, sealed {blob}, created_at TEXT NOT NULL, revoked_at TEXT,"
            " revision BIGINT NOT NULL)",
            "CREATE INDEX credentials_by_revision ON credentials (revision)",
        ],
        [
            # Which KEK seals the store (``sealing``: kind and check value, "pkcs11:1a2b…"),
            # so a proxy configured with another one is refused with a clear message. NULL until
            # a KEK first opens the store (a store made before this step is claimed then).
            "ALTER TABLE store_meta ADD COLUMN kek_check TEXT",
        ],
    ]


def migrate(db: StoreConnection) -> None:
    """Bring the store to ``SCHEMA_VERSION``; an empty database becomes an empty store."""
    with transaction(db, db.begin_write):
        db.lock_for_migration()
        db.query(
            "CREATE TABLE IF NOT EXISTS store_meta ("
            " id INTEGER PRIMARY KEY CHECK (id = 1),"
            " schema_version INTEGER NOT NULL, revision BIGINT NOT NULL)"
        )
        rows = db.query("SELECT schema_version FROM store_meta")
        if rows:
            current = int(rows[0][0])
        else:
            current = 1 if db.table_exists("keys") else 0
            db.query("INSERT INTO store_meta VALUES (1, ?, 0)", (current,))
        if current > SCHEMA_VERSION:
            raise ConfigError(
                f"key store {db.location.display}: schema version {current} was written by a "
                f"newer xks-proxy (this one knows up to {SCHEMA_VERSION}); upgrade xks-proxy"
            )
        for step in _migrations(db.blob_type)[current:]:
            for statement in step:
                db.query(statement)
        db.query("UPDATE store_meta SET schema_version = ?", (SCHEMA_VERSION,))
