"""Following the discrepancy log as it grows, for the supervisor's live report.

Worker processes append to one file; the supervisor reads what they add, whole lines only.
Only a regular file is followed: a log on a pipe or FIFO belongs to whoever reads it.
Rotation replaces the file while workers may still write to the old one (logrotate renames
first and signals afterwards), so a replaced file stays open and is read until it has been
quiet for ``RETIRE_AFTER`` seconds. A file truncated in place (copytruncate) is read again
from the top, even when it has grown past the old offset by the next poll: its first bytes
no longer match.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import orjson

POLL_INTERVAL = 0.5
READ_LIMIT = 4 * 1024 * 1024
"""Bytes read from one file per poll: a burst is taken in steps, never all in memory."""
RETIRE_AFTER = 5.0
"""Seconds a replaced file must stay quiet before it is closed."""
HEAD_BYTES = 256
"""Bytes of a file's start remembered to tell a truncated and refilled file from a grown one."""


class _Followed:
    """One open log file and where reading it has got to."""

    def __init__(self, file: BinaryIO, inode: int, offset: int) -> None:
        self.file = file
        self.inode = inode
        self.offset = offset
        self.partial = b""
        self.head = os.pread(file.fileno(), HEAD_BYTES, 0) if offset else b""
        self.quiet_since: float | None = None

    def truncated(self, size: int) -> bool:
        if size < self.offset:
            return True
        head = self.head
        return bool(head) and os.pread(self.file.fileno(), len(head), 0) != head

    def rewind(self) -> None:
        self.file.seek(0)
        self.offset, self.partial, self.head = 0, b"", b""

    def read(self) -> list[bytes]:
        """The whole lines appended since the last read (at most ``READ_LIMIT`` bytes)."""
        data = self.file.read(READ_LIMIT)
        if not data:
            return []
        if self.offset < HEAD_BYTES:
            self.head = os.pread(self.file.fileno(), HEAD_BYTES, 0)
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        return lines


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


class LogFollower:
    def __init__(self, path: Path, on_record: Callable[[dict[str, Any]], None]) -> None:
        self._path = path
        self._on_record = on_record
        self._current: _Followed | None = None
        self._retired: list[_Followed] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        # Only what is written from now on: earlier runs belong to the offline report.
        self._current = self._open(at_end=True)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _open(self, *, at_end: bool) -> _Followed | None:
        if not _regular(self._path):
            return None  # a pipe or FIFO (the log shipper's): opening it could block or steal
        try:
            file = open(self._path, "rb", buffering=0)  # noqa: SIM115 - kept open across polls
        except OSError:
            return None
        st = os.fstat(file.fileno())
        offset = st.st_size if at_end else 0
        file.seek(offset)
        return _Followed(file, st.st_ino, offset)

    def poll(self) -> int:
        """Read what was appended since the last call; returns the records passed on."""
        count = 0
        now = time.monotonic()
        for old in list(self._retired):  # the older records first
            lines = old.read()
            count += self._pass_on(lines)
            if lines:
                old.quiet_since = now
            elif old.quiet_since is not None and now - old.quiet_since >= RETIRE_AFTER:
                old.file.close()
                self._retired.remove(old)
        try:
            st: os.stat_result | None = os.stat(self._path)
        except OSError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            st = None
        current = self._current
        if st is not None and (current is None or st.st_ino != current.inode):
            if current is not None:
                count += self._pass_on(current.read())
                current.quiet_since = now
                self._retired.append(current)
            self._current = current = self._open(at_end=False)
        elif st is not None and current is not None and current.truncated(st.st_size):
            current.rewind()
        if current is not None:
            count += self._pass_on(current.read())
        return count

    def _pass_on(self, lines: list[bytes]) -> int:
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
        for followed in (self._current, *self._retired):
            if followed is not None:
                with contextlib.suppress(OSError):
                    followed.file.close()
        self._current, self._retired = None, []
