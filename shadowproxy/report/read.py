"""Reading logs: files, globs, stdin, gzip and zstd, merged into one aggregator.

Each line is decoded on its own with orjson; a line that is not a JSON object is counted as
corrupted and skipped (the caller warns once), blank lines are ignored. Compression is told
by the stream's first bytes, not the name, so a compressed stdin works too. A gzip log that
ends mid-stream (still being written, or caught while rotated) is read up to the cut and
listed in ``counts.truncated`` for the caller to warn about.
"""

from __future__ import annotations

import glob
import gzip
import io
import os
import sys
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, BinaryIO, Protocol, cast

import orjson
import zstandard

from shadowproxy.report.aggregate import EXCHANGE_EVENT, Aggregator, InputCounts

STDIN = "-"
CHUNK_BYTES = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GLOB_CHARS = frozenset("*?[")
TRUNCATED = (
    "{name}: the compressed data ends early (cut while being written or rotated?); "
    "read up to the cut"
)
"""The warning for a log in ``InputCounts.truncated``, to ``format(name=...)``."""

RecordPredicate = Callable[[Mapping[str, Any]], bool]


class ByteStream(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class RecordSink(Protocol):
    """What lines are fed into: the ``Aggregator``, or another pass over the same records."""

    counts: InputCounts

    def add(self, record: Mapping[str, Any], /) -> bool: ...


class ReportInputError(Exception):
    """A log that cannot be read; the message names it and is meant for the operator."""


def expand_sources(names: Sequence[str]) -> list[str]:
    """Files as given, globs expanded (sorted), ``-`` for stdin; missing ones raise.

    A file named more than once (again, by a glob, a link or as stdin redirected from it) is
    read once, where it first appears: counted twice, it would double its exchanges.
    """
    sources: list[str] = []
    for name in names:
        if name == STDIN or os.path.exists(name):
            sources.append(name)
        elif _GLOB_CHARS & set(name):
            matched = sorted(glob.glob(name, recursive=True))
            if not matched:
                raise ReportInputError(f"{name}: no file matches this pattern")
            sources.extend(matched)
        else:
            raise ReportInputError(f"{name}: no such file")
    if sources.count(STDIN) > 1:
        raise ReportInputError("standard input (-) can be read only once")
    seen: set[tuple[int, int]] = set()
    unique: list[str] = []
    for name in sources:
        identity = _identity(name)
        if identity is not None:
            if identity in seen:
                continue
            seen.add(identity)
        unique.append(name)
    return unique


def _identity(name: str) -> tuple[int, int] | None:
    """(device, inode) of the file ``name`` reads, or None when there is none to compare
    (it vanished; stdin is closed): then opening it says what is wrong."""
    try:
        status = os.fstat(sys.stdin.fileno()) if name == STDIN else os.stat(name)
    except (OSError, ValueError, AttributeError):  # ValueError, AttributeError: no stdin
        return None
    return status.st_dev, status.st_ino


@contextmanager
def open_source(name: str) -> Iterator[ByteStream]:
    """A binary stream of the log's lines, decompressed when it starts like gzip or zstd."""
    try:
        raw: BinaryIO = sys.stdin.buffer if name == STDIN else open(name, "rb")  # noqa: SIM115
    except OSError as error:
        raise ReportInputError(f"{name}: cannot open: {error.strerror or error}") from None
    try:
        buffered = (
            raw
            if isinstance(raw, io.BufferedReader)
            else io.BufferedReader(cast(io.RawIOBase, raw))
        )
        head = buffered.peek(4)[:4]
        if head.startswith(GZIP_MAGIC):
            yield _Pieces(gzip.GzipFile(fileobj=buffered, mode="rb"))
        elif head.startswith(ZSTD_MAGIC):
            yield zstandard.ZstdDecompressor().stream_reader(buffered, read_across_frames=True)
        else:
            yield buffered
    finally:
        if name != STDIN:
            raw.close()


class _Pieces:
    """A gzip stream read one decompressed piece at a time. ``GzipFile.read(n)`` gathers
    pieces up to ``n`` bytes and, when the data ends mid-stream, drops those gathered with
    its EOFError; ``read1`` hands each piece over, so every line before the cut is read."""

    def __init__(self, stream: gzip.GzipFile) -> None:
        self._stream = stream

    def read(self, size: int = -1, /) -> bytes:
        return self._stream.read1(size)


def iter_lines(stream: ByteStream) -> Iterator[bytes]:
    """Lines without their newline, read in large chunks (a final line may lack one)."""
    pending: list[bytes] = []
    while chunk := stream.read(CHUNK_BYTES):
        if b"\n" not in chunk:
            # A line longer than a piece: its parts are joined once, when it ends, not copied
            # again with every piece (gzip hands over small ones).
            pending.append(chunk)
            continue
        if pending:
            pending.append(chunk)
            chunk = b"".join(pending)
        lines = chunk.split(b"\n")
        rest = lines.pop()
        pending = [rest] if rest else []
        yield from lines
    if pending:
        yield b"".join(pending)


def feed(
    aggregator: RecordSink,
    lines: Iterator[bytes],
    record_filter: RecordPredicate | None = None,
    source: str = "",
) -> None:
    """Decode, filter and add each line; bad lines are counted in ``aggregator.counts``."""
    counts = aggregator.counts
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    add = aggregator.add
    number = 0
    for number, line in enumerate(lines, counts.lines + 1):
        try:
            record = loads(line)
        except decode_error:
            if not line.strip():
                continue
            record = None
        if type(record) is not dict:
            counts.corrupted += 1
            if counts.first_corrupted is None:
                counts.first_corrupted = f"{source or 'input'}, line {number - counts.lines}"
            continue
        if (
            record_filter is not None
            and record.get("event") == EXCHANGE_EVENT
            and not record_filter(record)
        ):
            counts.filtered_out += 1
            continue
        add(record)
    counts.lines = max(counts.lines, number)


def read_logs(
    names: Sequence[str],
    record_filter: RecordPredicate | None = None,
    aggregator: Aggregator | None = None,
) -> Aggregator:
    """Every record of every named log, merged; ReportInputError when one cannot be read."""
    aggregator = aggregator or Aggregator()
    read_into(aggregator, names, record_filter)
    return aggregator


def read_into(
    sink: RecordSink, names: Sequence[str], record_filter: RecordPredicate | None = None
) -> None:
    """Feed every record of every named log to ``sink``; ReportInputError as ``read_logs``."""
    for name in expand_sources(names):
        label = "stdin" if name == STDIN else name
        try:
            with open_source(name) as stream:
                feed(sink, _lines_to_cut(stream, sink.counts, label), record_filter, label)
        except ReportInputError:
            raise
        except (OSError, zlib.error, zstandard.ZstdError) as error:
            raise ReportInputError(f"{label}: cannot read: {error}") from None


def _lines_to_cut(stream: ByteStream, counts: InputCounts, label: str) -> Iterator[bytes]:
    """``iter_lines``, ending where gzip data is cut short (a log compressed while still
    written to, or caught mid-rotation): like a corrupt line, the loss is noted in
    ``counts.truncated`` for a warning, and what came before still counts."""
    try:
        yield from iter_lines(stream)
    except EOFError:
        counts.truncated.append(label)
