"""The discrepancy log: the record schema and the writer that appends whole lines.

One JSON object per line. Exchange lines carry ``"event": "exchange"``; other events
(``config_reloaded``, ...) share the file so a reader sees them in order. README documents
the schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import re
import stat
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from datetime import UTC, datetime
from itertools import islice
from typing import Any
from urllib.parse import unquote_plus

import structlog

from shadowproxy import logsafe
from shadowproxy.compare import decode, media
from shadowproxy.compare.headers import list_value
from shadowproxy.compare.model import Comparison, Difference, Where
from shadowproxy.config import DEFAULT_REDACT_QUERY, LogConfig
from shadowproxy.exchange import Exchange, Failure, Outcome, Response
from shadowproxy.headers import REDACTED
from shadowproxy.logsafe import secret_header
from shadowproxy.oplog import LOSS_REPORT_INTERVAL, ThrottledCount
from shadowproxy.period import Period
from shadowproxy.pipeout import BackgroundWriter, append_lines, waits_for_reader
from shadowproxy.redact import Redactor

EXCHANGE_EVENT = "exchange"
_ORDERED_HEAD = ("ts", "event")
# A batch is written once it reaches this size even before the flush interval ends.
FLUSH_BYTES = 256 * 1024
# A log file that cannot be opened (its directory gone, no permission) is tried again this often.
REOPEN_INTERVAL = 1.0
# Seconds a closing log gives a pipe's reader to take the lines still waiting for it.
OUTPUT_DRAIN_TIMEOUT = 2.0
# A lossless writer waits for a pipe's reader in steps this long, so it can be told to give up.
OUTPUT_WAIT_STEP = 0.25


URL_HEADERS = frozenset({"location", "content-location", "referer"})
"""Headers whose values are URLs: their queries are redacted as a request's path is."""
_PARAMETER = re.compile(r"(?<=[?&;])[^&;#]+")
"""A query parameter: after ``?``, ``&`` or ``;``, up to the next of ``&``, ``;`` or ``#``."""
_TRAILING_BRACKETS = re.compile(r"(?:\[[^\]]*\])+$")
_ENCODED_EQUALS = "%3d"


class QueryRedactor:
    """Replaces the values of named query parameters with ``[redacted]``, in a request path
    (``/login?user=ada&token=[redacted]``) and in text that quotes a URL, such as an error
    message; the rest of the text stays as it was, byte for byte.

    A name is compared as a server may read it: percent-decoded (``%74oken``), without a
    trailing ``[...]`` (``token[]``), in any case. The value is everything up to the next
    ``&``, ``;`` or ``#``, whatever it holds; a name whose ``=`` is percent-encoded
    (``token%3dS``, which a server that decodes before it splits reads as ``token=S``) has
    what follows the ``%3d`` replaced."""

    def __init__(self, names: Iterable[str]) -> None:
        self._names = frozenset(n.lower() for n in names)

    def __call__(self, text: str) -> str:
        if not self._names or ("=" not in text and "%" not in text):
            return text
        return _PARAMETER.sub(self._parameter, text)

    def _parameter(self, match: re.Match[str]) -> str:
        raw = match.group()
        name, equals, _ = raw.partition("=")
        encoded = name.lower().find(_ENCODED_EQUALS)
        if encoded >= 0:
            name, equals = raw[:encoded], raw[encoded : encoded + len(_ENCODED_EQUALS)]
        if not equals or not self.secret(name):
            return raw
        return f"{name}{equals}{REDACTED}"

    def secret(self, name: str) -> bool:
        """Whether the parameter called ``name`` (as written in the URL) is redacted."""
        decoded = unquote_plus(name) if "%" in name or "+" in name else name
        return _TRAILING_BRACKETS.sub("", decoded).lower() in self._names


DEFAULT_QUERY_REDACTOR = QueryRedactor(DEFAULT_REDACT_QUERY)


def _side(result: Response | Failure, query: QueryRedactor) -> dict[str, Any]:
    if isinstance(result, Failure):
        return {
            "status": None,
            "latency_ms": round(result.latency_ms, 3),
            "bytes": 0,
            "error": result.kind.value,
            "detail": query(result.detail),
        }
    return {
        "status": result.status,
        "latency_ms": round(result.latency_ms, 3),
        "bytes": result.size,
        "error": None,
    }


TEXT_WITHHELD = "body_text_withheld"
"""The note on a record whose body lines were left out: see `_withholds_text`."""
_HEAD_BYTES = 64
"""Decoded bytes looked at to tell whether a content-encoded body looks like JSON."""
_TEXT_COMPARED = frozenset({media.BodyKind.TEXT.value, media.BodyKind.BINARY.value})
_FIELDED = frozenset({media.BodyKind.JSON, media.BodyKind.FORM})


def _may_hold_fields(response: Response) -> bool:
    """A body where ``log.redact`` places may stand: declared JSON or form, or looking like
    JSON; or one whose start cannot be seen."""
    if media.declared_kind(response.header("content-type")) in _FIELDED:
        return True
    applied = decode.codings(list_value(response.headers, "content-encoding"))
    head = decode.head(response.body, applied, _HEAD_BYTES)
    if head is None:
        return True
    if not head.strip(b" \t\r\n"):
        return len(head) >= _HEAD_BYTES  # only whitespace so far: the rest is unseen
    return media.looks_like_json(head)


def _withholds_text(
    exchange: Exchange,
    comparison: Comparison,
    noise: Sequence[Difference],
    redactor: Redactor | None,
) -> bool:
    """Bodies that may hold redacted fields but were compared as text (invalid JSON, say) or
    bytes: the redactor cannot find its places in lines, so the lines are not written."""
    if not redactor or comparison.body_kind not in _TEXT_COMPARED:
        return False
    if not comparison.excerpt and not any(
        d.where is Where.BODY for d in (*comparison.differences, *noise)
    ):
        return False  # nothing that quotes a body: a match, say
    candidate = exchange.candidate
    return _may_hold_fields(exchange.primary) or (
        isinstance(candidate, Response) and _may_hold_fields(candidate)
    )


def _without_text(data: dict[str, Any]) -> bool:
    """Drop the line texts of a text difference (its line numbers stay); True if any was."""
    dropped = False
    for side in ("primary", "candidate"):
        value = data[side]
        if isinstance(value, dict) and "text" in value:
            data[side] = {k: v for k, v in value.items() if k != "text"}
            dropped = True
    return dropped


def _header_value(value: Any, query: QueryRedactor) -> Any:
    """A URL header's value (or values, when repeated) with its query redacted."""
    if isinstance(value, str):
        return query(value)
    if isinstance(value, list):
        return [query(v) if isinstance(v, str) else v for v in value]
    return value


def _redact(difference: Difference, query: QueryRedactor) -> dict[str, Any]:
    data = difference.to_dict()
    if difference.where is Where.HEADER:
        # compare/headers.py masks secret headers already; masked again here, as the record
        # is what must never hold them, whatever made the difference.
        if secret_header(difference.path):
            data["primary"] = REDACTED if difference.primary is not None else None
            data["candidate"] = REDACTED if difference.candidate is not None else None
        elif difference.path.lower() in URL_HEADERS:
            data["primary"] = _header_value(difference.primary, query)
            data["candidate"] = _header_value(difference.candidate, query)
    return data


def _recorded(
    differences: Sequence[Difference],
    redactor: Redactor | None,
    query: QueryRedactor,
    withhold: bool = False,
) -> tuple[list[dict[str, Any]], bool]:
    """The differences as written, and whether line texts were left out (``withhold``)."""
    items = [_redact(d, query) for d in differences]
    withheld = False
    if withhold:
        for item in items:
            if item["where"] == Where.BODY.value and _without_text(item):
                withheld = True
    return (redactor.differences(items) if redactor else items), withheld


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
    query: QueryRedactor = DEFAULT_QUERY_REDACTOR,
) -> dict[str, Any]:
    """The log line for one exchange; ``comparison`` is None when the candidate failed.

    ``redactor`` hides body fields (``log.redact``), ``query`` query values
    (``log.redact_query``) in the path and in error details. Bodies that may hold redacted
    fields but were compared line by line keep their line numbers, not the lines
    (``body_text_withheld``)."""
    request = exchange.request
    record: dict[str, Any] = {
        "ts": datetime.fromtimestamp(exchange.started_at, UTC).isoformat().replace("+00:00", "Z"),
        "event": EXCHANGE_EVENT,
        "id": request.id,
        "method": request.method,
        "path": query(request.path),
        "endpoint": exchange.endpoint,
        "outcome": outcome_of(exchange.candidate, comparison).value,
        "primary": _side(exchange.primary, query),
        "candidate": _side(exchange.candidate, query),
    }
    if exchange.secondary is not None:
        record["secondary"] = _side(exchange.secondary, query)
    withhold = comparison is not None and _withholds_text(exchange, comparison, noise, redactor)
    withheld = False
    if comparison is not None:
        record["differences"], withheld = _recorded(
            comparison.differences, redactor, query, withhold
        )
        record["difference_count"] = comparison.total
        record["body_kind"] = comparison.body_kind
        if comparison.notes:
            record["notes"] = list(comparison.notes)
        if comparison.excerpt:
            if withhold:
                withheld = True
            else:
                record["excerpt"] = comparison.excerpt
    else:
        record["differences"] = []
        record["difference_count"] = 0
    if noise:
        record["noise"], noise_withheld = _recorded(noise, redactor, query, withhold)
        withheld = withheld or noise_withheld
    if withheld:
        record["notes"] = [*record.get("notes", ()), TEXT_WITHHELD]
    if exchange.tags:
        record["tags"] = dict(exchange.tags)
    return record


def _failure(error: OSError | None) -> str:
    """Why lines were not written, for the count of lost records."""
    if error is None:
        return "short write"
    if error.errno == errno.ENOSPC:
        return "disk full"
    return error.strerror or "write failed"


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
    half an object behind. When the disk is full or the file unwritable (or cannot be opened
    at all) the proxy goes on serving; lost records are counted and reported at most once a
    minute, and a file that could not be opened is tried again every second.

    With ``max_bytes`` the file is rotated before a batch would take it past that size. Every
    process sharing the file checks its size before each write; the one that finds it full
    takes an exclusive, non-blocking ``flock`` on it, renames the files (``PATH`` becomes
    ``PATH.1``) only while ``PATH`` is still the file it holds, and reopens ``PATH`` by name.
    The others find the same file full, see it renamed already, and just reopen. A batch
    written in between lands at the end of ``PATH.1``: whole lines, nothing lost.

    ``lossless`` (for replay, which has no request path to protect): a pipe's reader that is
    behind is waited for instead of costing lines. Its queue has no bound; the caller holds
    back with `room`, and `close` waits until every line is written (or `give_up`).
    """

    def __init__(
        self,
        config: LogConfig,
        on_lost: Any = None,
        oplog: Any = None,
        before_flush: Callable[[], None] | None = None,
        *,
        lossless: bool = False,
    ) -> None:
        self._path = config.path
        self._background: BackgroundWriter | None = None
        """Set when the output is a pipe, socket or terminal: a thread writes to it."""
        self._lossless = lossless
        self._giving_up = False
        self._period = Period(config.flush_interval)
        self.configure(config)
        self._fd: int | None = None
        self._owns_fd = False
        self._open_failed_at: float | None = None
        self._rotation_paused_until = 0.0
        self._unended: os.stat_result | None = None
        """The file a short write left ending in the middle of a line, with no room for its
        end: the next batch written to it starts with a newline."""
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._pending_records = 0
        self._flusher: asyncio.Task[None] | None = None
        self._on_lost = on_lost
        self._before_flush = before_flush
        self._before_flush_failed = False
        """Said once in the operational log; the hook is tried again at every flush."""
        self._oplog = oplog
        self.lost = 0
        self.lost_reasons: Counter[str] = Counter()
        """Records lost, by reason: for a summary that says why."""
        self._losses = ThrottledCount(self._say_lost)
        self.logger = structlog.wrap_logger(
            _LineSink(self),
            processors=[_timestamp, _ordered, structlog.processors.JSONRenderer(logsafe.dumps)],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            context_class=dict,
        )

    def configure(self, config: LogConfig) -> None:
        """Take the flush interval, rotation and buffer settings (on a reload too); the path
        stays the one the writer was made with."""
        self._period.set(config.flush_interval)
        self._max_bytes = config.max_bytes if self._path != "-" else None
        self._backups = config.backups
        self._max_buffer_bytes = config.max_buffer_bytes
        if self._background is not None and not self._lossless:
            self._background.max_bytes = config.max_buffer_bytes

    def open(self) -> None:
        if self._path == "-":
            if sys.stdout is None:  # started with standard output closed
                raise OSError(errno.EBADF, "standard output is closed")
            self._fd, self._owns_fd = sys.stdout.fileno(), False
        else:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            self._fd, self._owns_fd = os.open(self._path, flags, 0o640), True
        if self._background is None and waits_for_reader(self._fd):
            bound = sys.maxsize if self._lossless else self._max_buffer_bytes
            self._background = BackgroundWriter(self._fd, bound, on_lost=self._count_lost)

    def _try_open(self) -> bool:
        """Open the file; on failure say so (once until it works again) and carry on."""
        try:
            self.open()
        except (OSError, ValueError) as error:  # ValueError: a NUL in the path
            if self._open_failed_at is None and self._oplog is not None:
                self._oplog.error(
                    "log_open_failed",
                    path=self._path,
                    error=getattr(error, "strerror", None) or str(error),
                    detail="records are counted as lost until the file can be opened",
                )
            self._open_failed_at = time.monotonic()
            return False
        if self._open_failed_at is not None and self._oplog is not None:
            self._oplog.info("log_reopened", path=self._path)
        self._open_failed_at = None
        return True

    def _retry_open(self) -> None:
        failed_at = self._open_failed_at
        if failed_at is not None and time.monotonic() - failed_at >= REOPEN_INTERVAL:
            self._try_open()

    def _close_fd(self) -> None:
        if self._owns_fd and self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None

    def reopen(self) -> bool:
        """Reopen the file by name, for logrotate's move-then-signal rotation; True when it
        was. Standard output, a pipe or a terminal is kept: it has no name to rotate, and a
        thread may be writing to it."""
        self.flush()
        if self._background is not None or self._path == "-":
            return False
        self._close_fd()
        return self._try_open()

    def start(self) -> None:
        if self._fd is None:
            self._try_open()
        self._flusher = asyncio.get_running_loop().create_task(self._flush_periodically())

    def write(self, record: dict[str, Any]) -> None:
        """Queue one record; the event name is the record's own ``event``.

        A record that opens with its ``ts`` and ``event`` (as `build_record` makes it) is
        serialised as it is: it is data in a fixed schema, and the logger's processors would
        only copy it twice on the way (two thirds of the cost of writing it).
        """
        if tuple(islice(record, 2)) == _ORDERED_HEAD:
            self.append(logsafe.dumps(record, default=repr))
            return
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
        """Write what is buffered; ``before_flush`` runs first, even with nothing to write."""
        if self._before_flush is not None:
            try:
                self._before_flush()
            except Exception as error:  # never at the cost of the records
                if self._oplog is not None and not self._before_flush_failed:
                    self._oplog.error(
                        "before_flush_failed",
                        hook=getattr(self._before_flush, "__qualname__", repr(self._before_flush)),
                        error=f"{type(error).__name__}: {error}",
                    )
                self._before_flush_failed = True
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        records = self._pending_records
        self._buffer.clear()
        self._buffered = self._pending_records = 0
        if self._fd is None:
            self._retry_open()
        if self._fd is None:
            self._count_lost(records, "log not open")
            return
        if self._background is not None:
            if not self._background.offer(data, records):
                self._count_lost(records, "output blocked: its reader is behind")
            return
        if self._max_bytes is not None and not self._rotate_if_full(len(data)):
            self._count_lost(records, "log not open after rotation")
            return
        appended = append_lines(self._fd, data, self._ends_mid_line())
        self._unended = None
        if appended.unended:
            with contextlib.suppress(OSError):
                self._unended = os.fstat(self._fd)
        if appended.lost:
            self._count_lost(appended.lost, _failure(appended.error))

    def _ends_mid_line(self) -> bool:
        """Whether the open file is the one a short write left ending in the middle of a line."""
        if self._unended is None or self._fd is None:
            return False
        try:
            return os.path.samestat(os.fstat(self._fd), self._unended)
        except OSError:
            return False

    def _rotate_if_full(self, incoming: int) -> bool:
        """Rotate when ``incoming`` more bytes would take the file past ``max_bytes``;
        False when no file is open afterwards."""
        assert self._fd is not None
        assert self._max_bytes is not None
        try:
            held = os.fstat(self._fd)
        except OSError:
            return True
        if not stat.S_ISREG(held.st_mode) or held.st_size == 0:
            return True  # a device or pipe; or an empty file, which a batch may overfill alone
        if held.st_size + incoming <= self._max_bytes:
            return True
        if time.monotonic() < self._rotation_paused_until:
            return True
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True  # another process is rotating it right now; write on, look next time
        try:
            try:
                named = os.stat(self._path)
            except FileNotFoundError:
                named = None  # renamed by another process, not yet created again
            if named is not None and os.path.samestat(named, held):
                self._shift_backups(held.st_size)
        finally:
            self._close_fd()  # closing releases the lock
        return self._try_open()

    def _shift_backups(self, size: int) -> None:
        """PATH.N-1 becomes PATH.N (the oldest goes), ..., PATH becomes PATH.1. On failure the
        file is written on, past its size, and rotation is tried again after a while."""
        try:
            if self._backups == 0:
                os.unlink(self._path)
            else:
                # PATH.1 ... PATH.(kept) exist; the first missing one ends the chain.
                kept = 0
                while kept < self._backups and os.path.exists(f"{self._path}.{kept + 1}"):
                    kept += 1
                for index in range(min(kept, self._backups - 1), 0, -1):
                    os.replace(f"{self._path}.{index}", f"{self._path}.{index + 1}")
                os.replace(self._path, f"{self._path}.1")
        except OSError as error:
            self._rotation_paused_until = time.monotonic() + LOSS_REPORT_INTERVAL
            if self._oplog is not None:
                self._oplog.error("log_rotation_failed", path=self._path, error=str(error))
            return
        if self._oplog is not None:
            self._oplog.info("log_rotated", path=self._path, bytes=size, backups=self._backups)

    def _count_lost(self, records: int, reason: str) -> None:
        self.lost += records
        self.lost_reasons[reason] += records
        if self._on_lost is not None:
            self._on_lost(records)
        self._losses.add(records, reason)

    def _say_lost(self, records: int, reason: str) -> None:
        if self._oplog is not None:
            self._oplog.error("log_records_lost", path=self._path, records=records, reason=reason)

    async def _flush_periodically(self) -> None:
        while True:
            await self._period.wait()
            self.flush()

    async def room(self) -> None:
        """Wait while more than ``log.max_buffer_bytes`` wait for a pipe's reader: how a
        lossless writer's caller holds back instead of growing the queue without end."""
        background = self._background
        while (
            background is not None
            and not self._giving_up
            and background.queued > self._max_buffer_bytes
        ):
            await asyncio.to_thread(background.wait_below, self._max_buffer_bytes, OUTPUT_WAIT_STEP)

    def give_up(self) -> None:
        """A lossless writer stops waiting for its reader: what is left is lost (counted)."""
        self._giving_up = True

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        self.flush()
        if self._background is not None:
            timeout = OUTPUT_DRAIN_TIMEOUT
            if self._lossless:
                # Waited for in steps, off the event loop: a give_up ends the wait.
                while not self._giving_up and not await asyncio.to_thread(
                    self._background.wait_written, OUTPUT_WAIT_STEP
                ):
                    pass
                timeout = 0.0  # written, or given up on
            await asyncio.to_thread(self._background.close, timeout)
            self._background = None
        self._close_fd()
