"""Capture: sampled exchanges of the primary path written as HAR entries, for replay later.

The primary path asks `CaptureSink.begin` per request; for a sampled one it gets a
`Recording`, which keeps bounded copies of the bodies as they stream past and, once the
response has gone to the client, hands the exchange to the sink. Nothing else happens on the
request path: a writer thread builds the entries (decoding, redaction, JSON) and appends them,
whole lines per ``write``, to ``capture.path``. Exchanges waiting for the writer are bounded by
``capture.max_buffer_bytes``, together with the bodies recordings under way keep; past it new
ones, and those whose bodies would pass it, are dropped and counted. Capturing is
independent of mirroring: a request is captured whether or not it is mirrored.

The file is rotated before it would grow past ``capture.max_file_bytes``: it is renamed to
``NAME-<UTC time>.EXT`` beside it (so a sorted glob lists captures oldest first, the live file
last) and the oldest rotated files beyond ``capture.keep_files`` are deleted. With several
worker processes each writes its own file, ``NAME.w<N>.EXT``, so rotation never races.

``shadowproxy capture export FILE... --har OUT`` (``register``) turns captures into a HAR
document.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shadowproxy import logsafe
from shadowproxy.bounded import BoundedCopy
from shadowproxy.config import DEFAULT_REDACT_QUERY, CaptureConfig
from shadowproxy.endpoints import EndpointPattern, endpoint_of
from shadowproxy.exchange import Headers
from shadowproxy.har import MIN_WEIGHT, Captured, CaptureInputError, ReadCounts, build_entry, export
from shadowproxy.oplog import ThrottledCount
from shadowproxy.record import QueryRedactor
from shadowproxy.redact import Redactor

WRITE_BYTES = 1 << 20
"""Lines are written in batches of about this size."""
WAKE_BYTES = 256 * 1024
"""The writer is woken before its interval ends once this much waits."""
_BUFFER_FULL = "the capture buffer is full (capture.max_buffer_bytes)"


def worker_path(path: str, worker: int | None) -> str:
    """``capture.jsonl`` for a single process, ``capture.w2.jsonl`` for worker 2."""
    if worker is None:
        return path
    file = Path(path)
    return str(file.with_name(f"{file.stem}.w{worker}{file.suffix}"))


class CapturePolicy:
    """Which requests are captured: the first matching rule decides, else the global rate."""

    def __init__(self, config: CaptureConfig, rng: Callable[[], float] = random.random) -> None:
        self._rate = config.sample_rate
        self._rules = [
            (EndpointPattern.parse(rule.match), rule.capture, rule.sample_rate)
            for rule in config.rules
        ]
        self._random = rng

    def wants(self, method: str, raw_path: str) -> bool:
        rate = self._rate
        for pattern, capture, rule_rate in self._rules:
            if pattern.matches(method, raw_path):
                if not capture:
                    return False
                if rule_rate is not None:
                    rate = rule_rate
                break
        return rate >= 1.0 or (rate > 0.0 and self._random() < rate)


class Recording:
    """One captured exchange under way on the primary path."""

    __slots__ = (
        "_done", "_held", "_request", "_response", "_sink", "_started", "headers",
        "http_version", "id", "method", "raw_path", "scheme", "started_at",
    )  # fmt: skip

    def __init__(
        self,
        sink: CaptureSink,
        *,
        request_id: str,
        method: str,
        raw_path: str,
        scheme: str,
        http_version: str,
        headers: Headers,
        limit: int,
    ) -> None:
        self._sink = sink
        self.id = request_id
        self.method = method
        self.raw_path = raw_path
        self.scheme = scheme
        self.http_version = http_version
        self.headers = headers
        self.started_at = time.time()
        self._started = time.perf_counter()
        self._request = BoundedCopy(limit)
        self._response = BoundedCopy(limit)
        self._held = 0
        """Bytes of body kept so far, counted against ``capture.max_buffer_bytes``."""
        self._done = False

    def request_chunk(self, chunk: bytes) -> None:
        self._keep(self._request, chunk)

    def response_chunk(self, chunk: bytes) -> None:
        self._keep(self._response, chunk)

    def _keep(self, copy: BoundedCopy, chunk: bytes) -> None:
        if self._done:
            return
        kept = copy.kept
        copy.add(chunk)
        grown = copy.kept - kept
        if grown and not self._sink.hold(grown):
            # Recordings under way count against the buffer as waiting ones do: many large
            # uploads held at a slow primary would otherwise keep twice max_body_bytes each.
            self.close()
            self._request = self._response = BoundedCopy(0)
            self._sink.drop()
            return
        self._held += grown

    def close(self) -> None:
        """Done with this recording, completed or not (the primary failed, the client went
        away): what it held no longer counts against the buffer."""
        if not self._done:
            self._done = True
            self._sink.release(self._held)
            self._held = 0

    def complete(self, status: int, reason: str, headers: Headers) -> None:
        """The response went to the client in full: hand the exchange to the writer."""
        if self._done:
            return  # dropped on the way: counted then
        self.close()
        self._sink.submit(
            Captured(
                id=self.id,
                endpoint=endpoint_of(self.method, self.raw_path),
                started_at=self.started_at,
                method=self.method,
                scheme=self.scheme,
                raw_path=self.raw_path,
                http_version=self.http_version,
                request_headers=self.headers,
                request_body=self._request.body(),
                request_size=self._request.size,
                status=status,
                reason=reason,
                response_headers=headers,
                response_body=self._response.body(),
                response_size=self._response.size,
                latency_ms=(time.perf_counter() - self._started) * 1000,
            )
        )


class CaptureSink:
    """Samples requests on the primary path and writes them in a thread of its own.

    ``on_result(result, count)`` is told of ``written``, ``dropped`` (the buffer was full) and
    ``lost`` (the file could not be written) exchanges; it must be thread-safe (prometheus
    counters are).
    """

    def __init__(
        self,
        config: CaptureConfig,
        redact: Sequence[str] = (),
        *,
        redact_query: Sequence[str] = DEFAULT_REDACT_QUERY,
        path: str | None = None,
        on_result: Callable[[str, int], None] | None = None,
        oplog: Any = None,
    ) -> None:
        self.config = config
        self.path = path or config.path
        self._policy = CapturePolicy(config)
        self._redaction = (Redactor(redact), QueryRedactor(redact_query))
        """``log.redact`` and ``log.redact_query``, swapped whole by `configure_redaction`."""
        self._on_result = on_result
        self._oplog = oplog
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._writing = threading.Lock()
        """Held while lines are encoded and written: one writer at a time."""
        self._queue: deque[Captured] = deque()
        self._pending_bytes = 0
        self._recording_bytes = 0
        """Body bytes kept by recordings under way (event loop only)."""
        self._closing = False
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self._size = 0
        self.written = 0
        self.dropped = 0
        self.lost = 0
        self.rotations = 0
        self._drops = ThrottledCount(self._say_dropped)
        self._losses = ThrottledCount(self._say_lost)
        """Said from the writer (under ``_writing``): a failing disk fails every batch."""
        self._lost_reason = ""

    # --- on the event loop ------------------------------------------------------------------

    def configure_redaction(self, redact: Sequence[str], redact_query: Sequence[str]) -> None:
        """Take a reloaded ``log.redact`` and ``log.redact_query``: the capture redacts as
        the log does, so a secret named on reload must stop reaching this file too."""
        # One assignment, read once per batch by the writer thread; exchanges still waiting
        # are written under the new rules.
        self._redaction = (Redactor(redact), QueryRedactor(redact_query))

    def start(self) -> None:
        """Open the file (creating its directory) and start the writer thread."""
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self._open()
        self._thread = threading.Thread(target=self._run, name="shadowproxy-capture", daemon=True)
        self._thread.start()

    def begin(
        self,
        *,
        request_id: str,
        method: str,
        raw_path: str,
        scheme: str,
        http_version: str,
        headers: Headers,
    ) -> Recording | None:
        """A recording when this request is to be captured; None otherwise (cheap)."""
        if self._closing or not self._policy.wants(method, raw_path):
            return None
        if not self._room_for(MIN_WEIGHT):
            self.drop()  # not even the smallest exchange would fit
            return None
        return Recording(
            self,
            request_id=request_id,
            method=method,
            raw_path=raw_path,
            scheme=scheme,
            http_version=http_version,
            headers=headers,
            limit=self.config.max_body_bytes,
        )

    def _room_for(self, amount: int) -> bool:
        taken = self._pending_bytes + self._recording_bytes  # pending: read without the lock
        return taken + amount <= self.config.max_buffer_bytes

    def hold(self, amount: int) -> bool:
        """Count ``amount`` more bytes kept by a recording under way; False, counting
        nothing, when the buffer has no room for them."""
        if not self._room_for(amount):
            return False
        self._recording_bytes += amount
        return True

    def release(self, amount: int) -> None:
        """A recording under way let go of ``amount`` bytes (finished, or given up)."""
        self._recording_bytes -= amount

    def submit(self, captured: Captured) -> None:
        weight = captured.weight()
        with self._lock:
            taken = self._pending_bytes + self._recording_bytes
            if self._closing or taken + weight > self.config.max_buffer_bytes:
                full = True
            else:
                full = False
                self._queue.append(captured)
                self._pending_bytes += weight
                if self._pending_bytes >= WAKE_BYTES:
                    self._wake.notify()
        if full:
            self.drop()

    def drop(self) -> None:
        """Count one exchange dropped because the buffer is full."""
        self.dropped += 1
        if self._on_result is not None:
            self._on_result("dropped", 1)
        self._drops.add(1, _BUFFER_FULL)

    def _say_dropped(self, exchanges: int, reason: str) -> None:
        if self._oplog is not None:
            self._oplog.warning("capture_dropped", exchanges=exchanges, detail=reason)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def flush(self) -> None:
        """Write everything queued now, in the calling thread (tests; the writer's own loop)."""
        self._drain()

    async def close(self) -> None:
        """Write what is queued, stop the thread, close the file."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join)
        self._drain()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        # What the once-a-minute lines have not said yet.
        self._drops.flush(_BUFFER_FULL)
        with self._writing:
            self._losses.flush(self._lost_reason)

    # --- in the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        interval = self.config.flush_interval
        while True:
            with self._lock:
                if not self._closing and self._pending_bytes < WAKE_BYTES:
                    self._wake.wait(interval)
                closing = self._closing
            self._drain()
            if closing:
                return

    def _take(self) -> list[Captured]:
        with self._lock:
            items = list(self._queue)
            self._queue.clear()
        return items

    def _drain(self) -> None:
        with self._writing:
            self._drain_locked()

    def _drain_locked(self) -> None:
        items = self._take()
        if not items:
            return
        batch: list[bytes] = []
        batched = 0
        records = 0
        redactor, query_redactor = self._redaction
        for item in items:
            try:
                # Header bytes that are not UTF-8 cannot be JSON text: written replaced, so the
                # exchange is kept with that one value changed rather than lost.
                line = logsafe.dumps(
                    build_entry(item, redactor, self.config.max_body_bytes, query_redactor)
                )
            except Exception as error:  # a bug must cost one exchange, not the capture
                self._lose(1, f"cannot encode: {error!r}")
                continue
            finally:
                with self._lock:
                    self._pending_bytes -= item.weight()
            if batch and (
                batched + len(line) + 1 > WRITE_BYTES
                or self._size + batched + len(line) + 1 > self.config.max_file_bytes
            ):
                self._write(batch, records)
                batch, batched, records = [], 0, 0
            if self._size and self._size + len(line) + 1 > self.config.max_file_bytes:
                self._rotate()
            batch.append(line)
            batch.append(b"\n")
            batched += len(line) + 1
            records += 1
        if batch:
            self._write(batch, records)

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(self.path, flags, 0o640)
        self._size = os.fstat(self._fd).st_size

    def _write(self, batch: list[bytes], records: int) -> None:
        data = b"".join(batch)
        if self._fd is None:
            self._lose(records, "capture file not open")
            return
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError as error:
            lost = data.count(b"\n", written)
            if written:
                with contextlib.suppress(OSError):
                    os.write(self._fd, b"\n")  # end a partial line: the next batch starts clean
            self._size += written
            self._lose(lost, error.strerror or "write failed")
            self._note("written", records - lost)
            return
        self._size += len(data)
        self._note("written", records)

    def _note(self, result: str, count: int) -> None:
        if count <= 0:
            return
        if result == "written":
            self.written += count
        if self._on_result is not None:
            self._on_result(result, count)

    def _lose(self, count: int, reason: str) -> None:
        self.lost += count
        self._note("lost", count)
        self._lost_reason = reason
        self._losses.add(count, reason)

    def _say_lost(self, exchanges: int, reason: str) -> None:
        if self._oplog is not None:
            self._oplog.error("capture_lost", path=self.path, exchanges=exchanges, reason=reason)

    def _rotate(self) -> None:
        """Move the full file aside under a time-stamped name, start a new one, prune."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        file = Path(self.path)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        target = file.with_name(f"{file.stem}-{stamp}{file.suffix}")
        number = 1
        while target.exists():
            target = file.with_name(f"{file.stem}-{stamp}-{number}{file.suffix}")
            number += 1
        try:
            os.replace(self.path, target)
            self.rotations += 1
        except OSError as error:
            if self._oplog is not None:
                self._oplog.error("capture_rotate_failed", path=self.path, error=str(error))
        try:
            self._open()
        except OSError as error:
            if self._oplog is not None:
                self._oplog.error("capture_reopen_failed", path=self.path, error=str(error))
        self._prune()

    def _prune(self) -> None:
        for old in rotated_files(self.path)[: -self.config.keep_files or None]:
            with contextlib.suppress(OSError):
                old.unlink()


def rotated_files(path: str) -> list[Path]:
    """The rotated files of a capture, oldest first."""
    file = Path(path)
    pattern = re.compile(
        re.escape(file.stem) + r"-\d{8}T\d{6}\.\d{6}Z(?:-\d+)?" + re.escape(file.suffix)
    )
    directory = file.parent
    try:
        names = [p for p in directory.iterdir() if pattern.fullmatch(p.name)]
    except OSError:
        return []
    return sorted(names, key=lambda p: p.name)


# --- the command ----------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``capture export``."""
    capture = subparsers.add_parser(
        "capture",
        help="work with capture files (export to HAR)",
        description="Work with the files the proxy writes when capture is configured.",
    )
    commands = capture.add_subparsers(dest="capture_command", required=True, metavar="COMMAND")
    exporter = commands.add_parser(
        "export",
        help="write captures as one HAR 1.2 document",
        description="Write the entries of capture files (JSON lines, .gz/.zst, or HAR "
        "documents) as one HAR 1.2 document, for browser developer tools and HAR viewers.",
    )
    exporter.add_argument(
        "captures", nargs="+", metavar="FILE", help="capture files or globs; - for stdin"
    )
    exporter.add_argument(
        "--har", required=True, metavar="OUT", help="the HAR file to write (- for stdout)"
    )
    exporter.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    counts = ReadCounts()
    temporary: Path | None = None
    try:
        if args.har == "-":
            written = export(args.captures, sys.stdout.buffer, counts)
            sys.stdout.buffer.flush()
        else:
            target = Path(args.har)
            temporary = target.with_name(f".{target.name}.partial")
            with open(temporary, "wb") as out:
                written = export(args.captures, out, counts)
            os.replace(temporary, target)
            temporary = None
    except CaptureInputError as error:
        print(f"shadowproxy capture export: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"shadowproxy capture export: error: {args.har}: {error}", file=sys.stderr)
        return 2
    finally:
        if temporary is not None:
            with contextlib.suppress(OSError):
                temporary.unlink()
    for warning in counts.warnings():
        print(f"shadowproxy capture export: warning: {warning}", file=sys.stderr)
    if args.har != "-":
        print(
            f"shadowproxy capture export: wrote {written:,} entries to {args.har}", file=sys.stderr
        )
    return 0
