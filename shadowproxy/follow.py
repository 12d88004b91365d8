"""Following the discrepancy log as it grows, for the supervisor's live report.

Worker processes append to one file; the supervisor reads what they add, whole lines only,
and starts again from the top when the file is replaced (rotation).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

POLL_INTERVAL = 0.5
READ_LIMIT = 4 * 1024 * 1024


class LogFollower:
    def __init__(self, path: Path, on_record: Callable[[dict[str, Any]], None]) -> None:
        self._path = path
        self._on_record = on_record
        self._inode: int | None = None
        self._offset = 0
        self._partial = b""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        # Only what is written from now on: earlier runs belong to the offline report.
        try:
            st = os.stat(self._path)
            self._inode, self._offset = st.st_ino, st.st_size
        except OSError:
            pass
        self._task = asyncio.get_running_loop().create_task(self._run())

    def poll(self) -> int:
        """Read what was appended since the last call; returns the records passed on."""
        try:
            st = os.stat(self._path)
        except OSError:
            return 0
        if st.st_ino != self._inode or st.st_size < self._offset:
            self._inode, self._offset, self._partial = st.st_ino, 0, b""
        if st.st_size == self._offset:
            return 0
        with open(self._path, "rb") as file:
            file.seek(self._offset)
            data = file.read(READ_LIMIT)
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        count = 0
        for line in lines:
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict):
                self._on_record(record)
                count += 1
        return count

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            self.poll()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
