"""Writing to a pipe whose reader is behind: never blocking, bounded, whole lines."""

from __future__ import annotations

import os
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shadowproxy.pipeout import PIPE_BUF, BackgroundWriter, line_pieces
from tests.conftest import read_fd_to_end

lines = st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"") + b"\n"))


@given(lines, st.integers(min_value=1, max_value=600))
def test_pieces_are_whole_lines_within_the_limit_unless_one_line_is_longer(
    batch: list[bytes], limit: int
) -> None:
    data = b"".join(batch)
    pieces = list(line_pieces(data, limit))
    assert b"".join(pieces) == data
    for piece in pieces:
        assert piece.endswith(b"\n")
        assert len(piece) <= limit or piece.count(b"\n") == 1


def test_a_reader_that_is_behind_costs_lines_not_waiting() -> None:
    read_end, write_end = os.pipe()
    lost: list[tuple[int, str]] = []
    writer = BackgroundWriter(
        write_end, max_bytes=4096, on_lost=lambda n, why: lost.append((n, why))
    )
    line = b"x" * 99 + b"\n"
    offered = [writer.offer(line * 10, 10) for _ in range(200)]  # 200 KB, never blocking
    assert offered[0]
    assert not all(offered)  # the pipe and the bound are full: refused, for the caller to count
    kept = offered.count(True)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(read_fd_to_end(read_end)))
    reader.start()
    writer.close(timeout=10)
    os.close(write_end)
    reader.join(10)
    assert received[0] == line * 10 * kept  # whole lines, in order, all that was taken
    assert lost == []


def test_closing_with_a_reader_that_never_reads_counts_what_is_left() -> None:
    read_end, write_end = os.pipe()
    lost: list[tuple[int, str]] = []
    writer = BackgroundWriter(
        write_end, max_bytes=1 << 20, on_lost=lambda n, why: lost.append((n, why))
    )
    line = b"y" * 999 + b"\n"
    for _ in range(200):  # 200 KB: more than the pipe holds
        assert writer.offer(line, 1)
    writer.close(timeout=0.2)
    assert sum(n for n, _ in lost) > 0
    assert {why for _, why in lost} == {"output blocked at shutdown"}
    os.close(read_end)
    os.close(write_end)


def test_a_batch_larger_than_the_bound_fits_an_empty_queue() -> None:
    read_end, write_end = os.pipe()
    writer = BackgroundWriter(write_end, max_bytes=1024, on_lost=lambda n, why: None)
    batch = (b"z" * 99 + b"\n") * 100  # 10 KB against a bound of 1 KB
    assert writer.offer(batch, 100)  # the reader is keeping up: nothing waits yet
    assert writer.wait_written(10)
    assert os.read(read_end, 65536) == batch
    writer.close(timeout=10)
    os.close(read_end)
    os.close(write_end)


def read_exactly(fd: int, size: int) -> bytes:
    """``size`` bytes from ``fd``, waiting for them."""
    chunks: list[bytes] = []
    while size:
        chunk = os.read(fd, size)
        assert chunk
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("ending", ["reader gone", "shutdown"])
def test_lines_of_a_batch_that_reached_the_reader_are_never_counted_lost(ending: str) -> None:
    line = b"w" * 63 + b"\n"
    batch, lines_read = line * 4000, 2048  # 256 KB: the pipe holds a quarter of it
    read_end, write_end = os.pipe()
    lost: list[int] = []
    writer = BackgroundWriter(write_end, max_bytes=1 << 20, on_lost=lambda n, _: lost.append(n))
    assert writer.offer(batch, 4000)
    assert read_exactly(read_end, len(line) * lines_read) == line * lines_read
    if ending == "reader gone":
        os.close(read_end)  # the writer, waiting for room, fails with EPIPE
        assert writer.wait_written(10)
        writer.close(timeout=10)
    else:
        writer.close(timeout=0)  # the writer is left waiting for room
        os.close(read_end)
    os.close(write_end)
    # The lines read were written (so were those still in the pipe): never lost. The piece
    # the thread was writing when it was left counts as lost, even if it got out.
    in_hand = PIPE_BUF // len(line)
    assert 0 < sum(lost) <= 4000 - lines_read + in_hand
