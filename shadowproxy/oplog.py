"""The proxy's own operational log: JSON lines on standard error, for people and collectors.

Distinct from the discrepancy log (``record.py``), which holds one line per compared exchange.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from shadowproxy import logsafe
from shadowproxy.pipeout import BackgroundWriter, waits_for_reader

# Lines waiting for a standard error whose reader is behind; beyond it they are dropped.
MAX_BUFFER_BYTES = 1024 * 1024
# A recurring loss (records, exchanges) is said at most this often.
LOSS_REPORT_INTERVAL = 60.0
# Seconds an exiting process gives that reader to take the lines still waiting.
DRAIN_TIMEOUT = 2.0


class _StandardError:
    """Standard error as a binary file for structlog, written from a thread when it is a
    pipe, a socket or a terminal (see `pipeout`): a log collector that falls behind then
    costs lines, counted and said when there is room again, never a wait on the event loop.
    """

    def __init__(self) -> None:
        self._file = sys.stderr.buffer
        self._background: BackgroundWriter | None = None
        self.dropped = 0
        # The writer thread counts its losses while callers take the count to report it.
        self._dropped_lock = threading.Lock()
        if waits_for_reader(self._file.fileno()):
            self._background = BackgroundWriter(
                self._file.fileno(), MAX_BUFFER_BYTES, on_lost=self._lost
            )
            atexit.register(self.close)

    def write(self, line: bytes) -> int:
        if self._background is None:
            return self._file.write(line)
        with self._dropped_lock:
            if self.dropped and self._background.offer(self._dropped_line(), 1):
                self.dropped = 0
            if not self._background.offer(line, 1):
                self.dropped += 1
        return len(line)

    def flush(self) -> None:
        if self._background is None:
            self._file.flush()

    def wait_written(self, timeout: float) -> bool:
        """Wait until the lines written so far have reached the file. Blocks."""
        return self._background is None or self._background.wait_written(timeout)

    def close(self) -> None:
        if self._background is not None:
            self._background.close(DRAIN_TIMEOUT)

    def _lost(self, lines: int, _reason: str) -> None:
        with self._dropped_lock:
            self.dropped += lines

    def _dropped_line(self) -> bytes:
        return (
            logsafe.dumps({"event": "log_lines_dropped", "level": "error", "lines": self.dropped})
            + b"\n"
        )


class ThrottledCount:
    """A count said through ``say(count, reason)`` at most once per ``interval`` seconds: what
    comes in between is added to the next line, or said by `flush`. The first is said at
    once."""

    def __init__(
        self, say: Callable[[int, str], object], interval: float = LOSS_REPORT_INTERVAL
    ) -> None:
        self._say = say
        self._interval = interval
        self._unsaid = 0
        self._said_at: float | None = None

    def add(self, count: int, reason: str) -> None:
        self._unsaid += count
        if self._said_at is None or time.monotonic() - self._said_at >= self._interval:
            self.flush(reason)

    def flush(self, reason: str) -> None:
        """Say what is still unsaid, now."""
        if self._unsaid:
            self._say(self._unsaid, reason)
            self._unsaid = 0
            self._said_at = time.monotonic()


_stderr: _StandardError | None = None


def wait_written(timeout: float) -> bool:
    """Wait (blocking) until the lines logged so far have reached standard error; for an
    order other processes rely on, such as a worker's announcement before its supervisor's."""
    return _stderr is None or _stderr.wait_written(timeout)


def configure(level: int = logging.INFO) -> None:
    global _stderr
    _stderr = _StandardError()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=logsafe.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.BytesLoggerFactory(_stderr),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )


def get(**context: Any) -> Any:
    return structlog.get_logger("shadowproxy", **context)
