"""Keeps a proxy's in-memory copy of a key store current, without putting the store in the way.

Proxies serve from memory; this task only refreshes that memory. It reads what changed since the
revision it has (``KeyDatabase.changes_since``) when PostgreSQL NOTIFYs a write (within
milliseconds) and, as a fallback for a lost notification, every ``POLL_INTERVAL_SECONDS``. An
SQLite file notifies nobody, so there the poll is how changes arrive: every
``SQLITE_POLL_INTERVAL_SECONDS`` (one row of a local file, cheap), so that any change reaches
every proxy within a second with room to spare.

When the database cannot be read, the proxy keeps serving the keys it has; ``problem`` says why
(health turns DEGRADED, the log says it once), and the next successful read resynchronises.
Database calls run in a thread; the LISTEN connection is psycopg's async one, on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import psycopg

from xks_proxy.keystore.connections import NOTIFY_CHANNEL, conninfo
from xks_proxy.keystore.location import POSTGRESQL
from xks_proxy.keystore.records import KeyStoreUnavailableError, StoreChanges
from xks_proxy.keystore.sealing import KekMismatchError
from xks_proxy.keystore.store import KeyDatabase

log = logging.getLogger(__name__)
# How long stop() waits for its cancelled tasks.
STOP_TIMEOUT_SECONDS = 5.0
POLL_INTERVAL_SECONDS = 1.0
SQLITE_POLL_INTERVAL_SECONDS = 0.25


class StoreFollower:
    def __init__(
        self,
        database: KeyDatabase,
        apply: Callable[[StoreChanges], None],
        poll_interval: float | None = None,
    ) -> None:
        self._database = database
        self._apply = apply
        if poll_interval is None:
            postgres = database.location.kind == POSTGRESQL
            poll_interval = POLL_INTERVAL_SECONDS if postgres else SQLITE_POLL_INTERVAL_SECONDS
        self._poll_interval = poll_interval
        self._seen = -1
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.problem: str | None = None

    async def start(self) -> None:
        """The first full read, which must work; then follow changes in the background."""
        changes = await asyncio.to_thread(self._database.changes_since, self._seen)
        assert changes is not None
        self._apply(changes)
        self._seen = changes.revision
        self._tasks.append(asyncio.create_task(self._follow_forever()))
        if self._database.location.kind == POSTGRESQL:
            self._tasks.append(asyncio.create_task(self._listen_forever()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        # A cancelled LISTEN connection may take its time to wind down inside psycopg (a test
        # run once hung here for minutes); closing a backend never waits on it for long.
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT_SECONDS)
            if pending:
                log.warning("key store listener did not stop in %.0f s", STOP_TIMEOUT_SECONDS)
        self._tasks.clear()

    async def sync(self) -> None:
        """Read and apply what changed since the last read; record why when that fails."""
        try:
            changes = await asyncio.to_thread(self._database.changes_since, self._seen)
        except (KeyStoreUnavailableError, KekMismatchError) as error:
            # KekMismatchError: ``keys rewrap`` resealed the store under another KEK; the keys
            # in memory stay usable until this proxy is restarted with the new one.
            self._set_problem(str(error))
            return
        except Exception:
            log.exception("reading key store %s failed", self._database.location.display)
            self._set_problem(f"key store {self._database.location.display}: read failed")
            return
        if changes is not None:
            self._apply(changes)
            self._seen = changes.revision
        self._set_problem(None)

    def _set_problem(self, problem: str | None) -> None:
        if problem == self.problem:
            return
        if problem is None:
            log.warning(
                "key store %s is reachable again; keys resynchronised at revision %d",
                self._database.location.display,
                self._seen,
            )
        else:
            log.warning("%s; serving the keys in memory until it is back", problem)
        self.problem = problem

    async def _follow_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)
            self._wake.clear()
            await self.sync()

    async def _listen_forever(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    conninfo(self._database.location, "xks-proxy listener"), autocommit=True
                ) as connection:
                    await connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    # Whatever was written while nobody listened is read now, not at the poll.
                    self._wake.set()
                    async for _ in connection.notifies():
                        self._wake.set()
            except psycopg.Error:
                pass  # the poll reports the outage; listen again when the server is back
            await asyncio.sleep(self._poll_interval)
