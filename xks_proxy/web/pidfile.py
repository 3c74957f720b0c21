"""The pid file, held with an exclusive ``flock`` for as long as the proxy runs.

The lock, not the file's existence, says whether a proxy runs: it is taken before anything
else (before backends open or a port is bound), so a second ``serve`` on the same configuration
sees it held and stops without touching the first. A pid file left behind by a killed proxy
holds no lock and is simply taken over. Only the holder of the lock removes the file, and
``reload`` / ``reopen-logs`` signal a pid only while its lock is held, never a stale one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class AlreadyRunningError(Exception):
    """Another process holds the pid file's lock."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(f"already running as pid {pid}" if pid else "already running")
        self.pid = pid


class NotRunningError(Exception):
    """Nobody holds the pid file's lock: there is no proxy to signal."""


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


class PidFile:
    """Created, locked and written by ``acquire``; removed by its owner only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write our pid; raises AlreadyRunningError if it is held."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise AlreadyRunningError(pid) from None
            # The previous owner may have removed the file between our open and our lock: a
            # lock on an unlinked file protects nothing, so start again on the new one.
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Remove the file while still holding the lock, then let go of it."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                self.path.unlink()
        os.close(self._fd)
        self._fd = None


def running_pid(path: Path) -> int:
    """The pid of the proxy holding ``path``'s lock; NotRunningError when none does."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise NotRunningError(f"no pid file at {path}: is xks-proxy running?") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            if pid is not None:
                return pid
            raise NotRunningError(f"{path} holds no process id") from None
        raise NotRunningError(f"{path} is stale (no running xks-proxy holds it)")
    finally:
        os.close(fd)
