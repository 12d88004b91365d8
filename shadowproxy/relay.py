"""Workers' log lines on standard output, passed on by their supervisor.

With ``log.path: "-"`` and several workers, each worker writes its records into a pipe of its
own; the supervisor counts every record for the live report and passes the lines on to its
standard output. Lines of different workers never cut into each other, however long, and the
live report needs no file to follow.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from typing import Any

import orjson

from shadowproxy.oplog import ThrottledCount
from shadowproxy.pipeout import BackgroundWriter, append_lines, waits_for_reader

# A line still without its end past this size is dropped: memory stays bounded.
MAX_LINE_BYTES = 16 * 1024 * 1024
CLOSED = "standard output is closed"


class LineRelay:
    """Whole lines from any number of pipes to one output; each line, if a JSON object, to
    ``on_record`` first."""

    def __init__(
        self,
        out_fd: int | None,
        max_bytes: int,
        on_record: Callable[[dict[str, Any]], None],
        oplog: Any,
        on_lost: Callable[[int], object] | None = None,
    ) -> None:
        """``out_fd`` None: standard output was closed when the process started; the lines
        still feed ``on_record``, and count as lost."""
        self._fd = out_fd
        self._on_record = on_record
        self._log = oplog
        self._on_lost = on_lost
        # A pipe or terminal may wait for its reader: written by a thread, within a bound.
        self._background = (
            BackgroundWriter(out_fd, max_bytes, on_lost=self.count_lost)
            if out_fd is not None and waits_for_reader(out_fd)
            else None
        )
        if out_fd is None:  # as a single process says it (record.LogWriter)
            oplog.error(
                "log_open_failed",
                path="-",
                error=CLOSED,
                detail="records are counted as lost",
            )
        self._unended = False
        """A short write left the output ending in the middle of a line (see `append_lines`)."""
        self._ends: set[asyncio.Future[None]] = set()
        self.lost = 0
        self._losses = ThrottledCount(self._say_lost)

    def configure(self, max_bytes: int) -> None:
        """A reload's ``log.max_buffer_bytes``."""
        if self._background is not None:
            self._background.max_bytes = max_bytes

    async def attach(self, fd: int) -> None:
        """Relay what arrives on the read end ``fd`` until its writer closes it."""
        loop = asyncio.get_running_loop()
        ended = loop.create_future()
        self._ends.add(ended)
        ended.add_done_callback(self._ends.discard)
        await loop.connect_read_pipe(lambda: _Lines(self, ended), io.FileIO(fd, "r"))

    def lines(self, data: bytes) -> None:
        """Pass on ``data``: whole lines, each ending with a newline."""
        count = 0
        for line in data.split(b"\n")[:-1]:
            count += 1
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if type(record) is dict:
                self._on_record(record)
        # After the live report has them: whoever reads a line can find it there.
        if self._background is not None:
            if not self._background.offer(data, count):
                self.count_lost(count, "standard output is not read fast enough")
            return
        if self._fd is None:
            self.count_lost(count, CLOSED)
            return
        appended = append_lines(self._fd, data, self._unended)
        self._unended = appended.unended
        if appended.lost:
            error = appended.error
            self.count_lost(appended.lost, (error and error.strerror) or "write failed")

    async def close(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for every pipe's end, then for the output to take
        what is left; the rest counts as lost."""
        deadline = time.monotonic() + timeout
        if self._ends:
            await asyncio.wait(set(self._ends), timeout=timeout)
        if self._background is not None:
            left = max(0.0, deadline - time.monotonic())
            await asyncio.to_thread(self._background.close, left)
        self._losses.flush("at shutdown")

    def count_lost(self, lines: int, reason: str) -> None:
        self.lost += lines
        if self._on_lost is not None:
            self._on_lost(lines)
        self._losses.add(lines, reason)

    def _say_lost(self, lines: int, reason: str) -> None:
        self._log.error("log_records_lost", path="-", records=lines, reason=reason, by="supervisor")


class _Lines(asyncio.Protocol):
    """One worker's pipe: cut into whole lines; a line cut short by a dying worker is
    dropped, never passed on as half a record."""

    def __init__(self, relay: LineRelay, ended: asyncio.Future[None]) -> None:
        self._relay = relay
        self._ended = ended
        self._partial = b""
        self._skipping = False
        """The start of the line being received was dropped: so is the rest of it."""

    def data_received(self, data: bytes) -> None:
        if self._skipping:
            cut = data.find(b"\n")
            if cut < 0:
                return
            data, self._skipping = data[cut + 1 :], False
        end = data.rfind(b"\n")
        if end < 0:
            self._partial += data
            if len(self._partial) > MAX_LINE_BYTES:
                self._partial, self._skipping = b"", True
                self._relay.count_lost(1, "a line longer than the relay holds")
            return
        whole = self._partial + data[: end + 1] if self._partial else data[: end + 1]
        self._partial = data[end + 1 :]
        self._relay.lines(whole)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._partial:
            self._relay.count_lost(1, "a worker ended in the middle of a line")
        if not self._ended.done():
            self._ended.set_result(None)
