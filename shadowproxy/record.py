"""The discrepancy log: the record schema and the writer that appends whole lines.

One JSON object per line. Exchange lines carry ``"event": "exchange"``; other events
(``config_reloaded``, ...) share the file so a reader sees them in order. README documents
the schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sys
import time
from collections.abc import MutableMapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog

from shadowproxy.compare.model import Comparison, Difference, Where
from shadowproxy.config import SECRET_HEADERS, LogConfig
from shadowproxy.exchange import Exchange, Failure, Outcome, Response
from shadowproxy.headers import REDACTED
from shadowproxy.redact import Redactor

EXCHANGE_EVENT = "exchange"
# A batch is written once it reaches this size even before the flush interval ends.
FLUSH_BYTES = 256 * 1024
# Lost records are reported at most this often in the operational log.
LOSS_REPORT_INTERVAL = 60.0


def _side(result: Response | Failure) -> dict[str, Any]:
    if isinstance(result, Failure):
        return {
            "status": None,
            "latency_ms": round(result.latency_ms, 3),
            "bytes": 0,
            "error": result.kind.value,
            "detail": result.detail,
        }
    return {
        "status": result.status,
        "latency_ms": round(result.latency_ms, 3),
        "bytes": result.size,
        "error": None,
    }


def _redact(difference: Difference) -> dict[str, Any]:
    data = difference.to_dict()
    if difference.where is Where.HEADER and difference.path.lower() in SECRET_HEADERS:
        data["primary"] = REDACTED if difference.primary is not None else None
        data["candidate"] = REDACTED if difference.candidate is not None else None
    return data


def _recorded(differences: Sequence[Difference], redactor: Redactor | None) -> list[dict[str, Any]]:
    items = [_redact(d) for d in differences]
    return redactor.differences(items) if redactor else items


def outcome_of(candidate: Response | Failure, comparison: Comparison | None) -> Outcome:
    if isinstance(candidate, Failure) or comparison is None:
        return Outcome.CANDIDATE_ERROR
    return Outcome.MATCH if comparison.matched else Outcome.MISMATCH


def build_record(
    exchange: Exchange,
    comparison: Comparison | None,
    *,
    noise: Sequence[Difference] = (),
    redactor: Redactor | None = None,
) -> dict[str, Any]:
    """The log line for one exchange; ``comparison`` is None when the candidate failed."""
    request = exchange.request
    record: dict[str, Any] = {
        "ts": datetime.fromtimestamp(exchange.started_at, UTC).isoformat().replace("+00:00", "Z"),
        "event": EXCHANGE_EVENT,
        "id": request.id,
        "method": request.method,
        "path": request.path,
        "endpoint": exchange.endpoint,
        "outcome": outcome_of(exchange.candidate, comparison).value,
        "primary": _side(exchange.primary),
        "candidate": _side(exchange.candidate),
    }
    if exchange.secondary is not None:
        record["secondary"] = _side(exchange.secondary)
    if comparison is not None:
        record["differences"] = _recorded(comparison.differences, redactor)
        record["difference_count"] = comparison.total
        record["body_kind"] = comparison.body_kind
        if comparison.notes:
            record["notes"] = list(comparison.notes)
        if comparison.excerpt:
            record["excerpt"] = comparison.excerpt
    else:
        record["differences"] = []
        record["difference_count"] = 0
    if noise:
        record["noise"] = _recorded(noise, redactor)
    if exchange.tags:
        record["tags"] = dict(exchange.tags)
    return record


class _LineSink:
    """The structlog logger at the end of the chain: takes rendered bytes, buffers whole lines."""

    def __init__(self, writer: LogWriter) -> None:
        self._writer = writer

    def msg(self, line: bytes) -> None:
        self._writer.append(line)

    info = warning = error = msg


def _ordered(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    # Readers scan the first keys; put the time and the kind of line first.
    head = {"ts": event_dict.pop("ts", None), "event": event_dict.pop("event", None)}
    head.update(event_dict)
    return head


def _timestamp(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if "ts" not in event_dict:
        event_dict["ts"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return event_dict


class LogWriter:
    """Appends records as whole lines, batched, with one ``write`` per batch.

    The file is opened with O_APPEND and every write holds whole lines only, so several
    worker processes can share one file without interleaving, and a crash never leaves
    half an object behind. When the disk is full or the file unwritable the proxy goes on
    serving; lost records are counted and reported once a minute.
    """

    def __init__(self, config: LogConfig, on_lost: Any = None, oplog: Any = None) -> None:
        self._path = config.path
        self._interval = config.flush_interval
        self._fd: int | None = None
        self._owns_fd = False
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._pending_records = 0
        self._flusher: asyncio.Task[None] | None = None
        self._on_lost = on_lost
        self._oplog = oplog
        self.lost = 0
        self._lost_reported_at = 0.0
        self._lost_unreported = 0
        self.logger = structlog.wrap_logger(
            _LineSink(self),
            processors=[_timestamp, _ordered, structlog.processors.JSONRenderer(orjson.dumps)],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            context_class=dict,
        )

    def open(self) -> None:
        if self._path == "-":
            self._fd, self._owns_fd = sys.stdout.fileno(), False
        else:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            self._fd, self._owns_fd = os.open(self._path, flags, 0o640), True

    def reopen(self) -> None:
        """Reopen the file by name, for logrotate's move-then-signal rotation."""
        self.flush()
        if self._owns_fd and self._fd is not None:
            os.close(self._fd)
        self.open()

    def start(self) -> None:
        if self._fd is None:
            self.open()
        self._flusher = asyncio.get_running_loop().create_task(self._flush_periodically())

    def write(self, record: dict[str, Any]) -> None:
        """Queue one record; the event name is the record's own ``event``."""
        event = record.get("event", EXCHANGE_EVENT)
        fields = {k: v for k, v in record.items() if k != "event"}
        self.logger.info(event, **fields)

    def event(self, event: str, **fields: Any) -> None:
        self.logger.info(event, **fields)

    def append(self, line: bytes) -> None:
        self._buffer.append(line)
        self._buffer.append(b"\n")
        self._buffered += len(line) + 1
        self._pending_records += 1
        if self._buffered >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        records = self._pending_records
        self._buffer.clear()
        self._buffered = self._pending_records = 0
        if self._fd is None:
            self._count_lost(records, "log not open")
            return
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                # A short write happens when the disk fills up; end the partial line so the
                # next batch starts on a line of its own, and count what did not make it.
                os.write(self._fd, b"\n")
                self._count_lost(data.count(b"\n", written), "short write")
        except OSError as error:
            reason = "disk full" if error.errno == errno.ENOSPC else error.strerror
            self._count_lost(records, reason or "write failed")

    def _count_lost(self, records: int, reason: str) -> None:
        self.lost += records
        self._lost_unreported += records
        if self._on_lost is not None:
            self._on_lost(records)
        now = time.monotonic()
        if self._oplog is not None and now - self._lost_reported_at >= LOSS_REPORT_INTERVAL:
            self._oplog.error(
                "log_records_lost", path=self._path, records=self._lost_unreported, reason=reason
            )
            self._lost_reported_at = now
            self._lost_unreported = 0

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.flush()

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        self.flush()
        if self._owns_fd and self._fd is not None:
            os.close(self._fd)
        self._fd = None
