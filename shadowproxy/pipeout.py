"""Writing to a pipe, socket or terminal off the event loop, within a bound.

Once a pipe's buffer (64 KiB on Linux) is full, ``write`` waits for its reader: a log
collector that falls behind, a ``| less`` nobody scrolls. Done on the event loop, that wait
would stall every client request. `BackgroundWriter` hands batches to a thread through a
queue bounded in bytes; a batch that does not fit is refused, for the caller to count as
lost. Each ``write`` holds whole lines and, where the lines allow, at most ``PIPE_BUF``
bytes: the kernel writes that much atomically, so processes sharing the pipe (workers on one
standard output) never cut into each other's lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import NamedTuple

PIPE_BUF = getattr(select, "PIPE_BUF", 512)
"""Bytes a pipe takes in one piece (POSIX guarantees at least 512; Linux 4096)."""

NEWLINE = ord("\n")

LostHandler = Callable[[int, str], None]
"""Called with the records lost and why: on the event loop that made the writer, if any."""


def waits_for_reader(fd: int) -> bool:
    """A pipe, a socket or a terminal: a write may wait for whoever reads it. A file or
    another device (``/dev/null``) takes it at once, or fails at once (``/dev/full``)."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


def line_pieces(data: bytes, limit: int = PIPE_BUF) -> Iterator[bytes]:
    """``data`` cut after newlines into pieces of at most ``limit`` bytes; a longer line is
    a piece of its own."""
    start, end = 0, len(data)
    while start < end:
        if end - start <= limit:
            yield data[start:]
            return
        cut = data.rfind(b"\n", start, start + limit)
        if cut < 0:  # one line longer than the limit: whole, alone
            cut = data.find(b"\n", start + limit)
            if cut < 0:
                yield data[start:]
                return
        yield data[start : cut + 1]
        start = cut + 1


class Appended(NamedTuple):
    """What `append_lines` made of a batch."""

    lost: int
    """Lines that did not reach the file whole."""
    unended: bool
    """The file now ends in the middle of a line."""
    error: OSError | None
    """Why the rest was not written, if it was not."""


def append_lines(fd: int, data: bytes, unended: bool = False) -> Appended:
    """Write ``data``, whole lines, to a file or device that takes them at once.

    A full disk (or a file size limit) cuts a write short, at any byte. The file is then left
    ending in a line of its own: the newline after the written part of a line is written at
    once or, when there is no room for it either, in front of the next batch (``unended``);
    a record after that never runs into the half of another.
    """
    head = b"\n" if unended else b""
    payload = head + data if head else data
    view = memoryview(payload)
    error = None
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as failed:
        error = failed
    written = len(payload) - len(view)
    if written == 0:
        return Appended(data.count(b"\n"), unended, error)
    lost = data.count(b"\n", max(written - len(head), 0))
    if payload[written - 1] != NEWLINE:
        try:
            os.write(fd, b"\n")
        except OSError:
            return Appended(lost, True, error)
    return Appended(lost, False, error)


class BackgroundWriter:
    """Writes batches to ``fd`` from a thread; never blocks the caller."""

    def __init__(self, fd: int, max_bytes: int, on_lost: LostHandler) -> None:
        self._fd = fd
        self.max_bytes = max_bytes
        self._on_lost = on_lost
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the thread: something to write
        self._idle = threading.Condition(self._lock)  # wait_written: nothing left
        self._queue: deque[tuple[bytes, int]] = deque()
        self._queued = 0
        self._closing = False
        self._abandoned = False
        self._head_written = 0
        """Lines of the batch at the head of the queue already written: never counted lost."""
        self._thread = threading.Thread(target=self._run, name="shadowproxy-log-out", daemon=True)
        self._thread.start()

    def offer(self, data: bytes, records: int) -> bool:
        """Queue a batch of whole lines; False (nothing queued) when the bound is reached.
        A batch always fits an empty queue, however large: the reader is keeping up."""
        with self._lock:
            if self._closing or (self._queue and self._queued + len(data) > self.max_bytes):
                return False
            self._queue.append((data, records))
            self._queued += len(data)
            self._wake.notify()
        return True

    @property
    def queued(self) -> int:
        """Bytes waiting for the reader."""
        return self._queued

    def wait_written(self, timeout: float) -> bool:
        """Wait until everything queued so far is written; False on timeout. Blocks."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._queue, timeout)

    def wait_below(self, size: int, timeout: float) -> bool:
        """Wait until at most ``size`` bytes are queued; False on timeout. Blocks."""
        with self._lock:
            return self._idle.wait_for(lambda: self._queued <= size, timeout)

    def close(self, timeout: float) -> None:
        """Let the queue drain for up to ``timeout`` seconds; what is left counts as lost.

        Blocks: call it from a thread (``asyncio.to_thread``).
        """
        with self._lock:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout)
        with self._lock:
            self._abandoned = True  # a write still blocked in the thread is its last
            left = sum(records for _, records in self._queue)
            if self._queue:
                left = max(left - self._head_written, 0)
            self._queue.clear()
            self._queued = 0
            self._idle.notify_all()
        if left:
            self._report(left, "output blocked at shutdown")

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._wake.wait()
                if not self._queue:
                    return
                data, records = self._queue[0]
            written = 0
            try:
                for piece in line_pieces(data):
                    if self._abandoned:  # the caller may close the fd: write nothing more
                        return
                    view = memoryview(piece)
                    while view:
                        view = view[os.write(self._fd, view) :]
                    written += piece.count(b"\n")
                    self._head_written = written
            except OSError as error:  # the reader went away (EPIPE), ...
                if self._abandoned:  # close counted what was left
                    return
                self._report(max(records - written, 0), error.strerror or "write failed")
            with self._lock:
                if self._queue and self._queue[0][0] is data:
                    self._queue.popleft()
                    self._queued -= len(data)
                self._head_written = 0
                self._idle.notify_all()  # wait_written and wait_below look again

    def _report(self, records: int, reason: str) -> None:
        if self._loop is None:
            self._on_lost(records, reason)
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody left to tell
            self._loop.call_soon_threadsafe(self._on_lost, records, reason)
