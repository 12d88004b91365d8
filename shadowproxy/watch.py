"""Watching the config file for changes, the way Kubernetes delivers them.

A ConfigMap volume swaps a ``..data`` symlink rather than writing the file, so inotify on the
file itself misses updates. Polling ``stat`` through the symlink and hashing the content on
any change catches symlink swaps, editors that write a new file and rename it, and plain
in-place writes, on every filesystem, without another dependency.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from shadowproxy import oplog

Signature = tuple[int, int, int, int]


def _signature(path: Path) -> Signature | None:
    try:
        st = os.stat(path)  # follows the symlink chain to the file in force
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size)


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class FileWatcher:
    """Calls ``on_change`` once per change of the file's content."""

    def __init__(self, path: Path, interval: float, on_change: Callable[[], object]) -> None:
        self._path = path
        self._interval = interval
        self._on_change = on_change
        self._signature = _signature(path)
        self._digest = _digest(path)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def check(self) -> bool:
        """Look once; True when the content changed (and ``on_change`` was called)."""
        signature = _signature(self._path)
        if signature is None or signature == self._signature:
            return False
        self._signature = signature
        digest = _digest(self._path)
        if digest is None or digest == self._digest:
            return False
        self._digest = digest
        self._on_change()
        return True

    def mark_current(self) -> None:
        """Take the file as it is now as seen, after a reload made by other means (SIGHUP)."""
        self._signature = _signature(self._path)
        self._digest = _digest(self._path)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.check()
            except Exception as error:
                # A fault while applying one edit must not end the watching: the next edit
                # (the fix) would never be seen.
                oplog.get().error("config_watch_failed", error=f"{type(error).__name__}: {error}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
