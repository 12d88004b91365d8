"""The supervisor's relay of its workers' log lines: whole lines out, every record counted."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from shadowproxy import oplog, relay
from tests.conftest import read_fd_to_end


async def relay_into(
    out_fd: int, chunks: list[bytes], records: list[dict[str, Any]]
) -> relay.LineRelay:
    """Feed ``chunks`` through a real pipe, as a worker would write them, then close it."""
    lines = relay.LineRelay(out_fd, 1 << 20, records.append, oplog.get())
    read_end, write_end = os.pipe()
    await lines.attach(read_end)
    for chunk in chunks:
        os.write(write_end, chunk)
    os.close(write_end)
    await lines.close(5)
    return lines


async def test_lines_cut_anywhere_come_out_whole_and_records_are_counted(
    tmp_path: Path,
) -> None:
    first = orjson.dumps({"event": "exchange", "id": "a"}) + b"\n"
    second = orjson.dumps({"event": "exchange", "id": "b"}) + b"\n"
    data = first + b"not json\n" + second
    chunks = [data[i : i + 7] for i in range(0, len(data), 7)]
    out = tmp_path / "out.jsonl"
    records: list[dict[str, Any]] = []
    with out.open("wb") as file:
        lines = await relay_into(file.fileno(), chunks, records)
    assert out.read_bytes() == data
    assert [r["id"] for r in records] == ["a", "b"]
    assert lines.lost == 0


async def test_a_line_cut_short_by_a_dying_worker_is_not_passed_on(tmp_path: Path) -> None:
    whole = orjson.dumps({"event": "exchange", "id": "a"}) + b"\n"
    out = tmp_path / "out.jsonl"
    records: list[dict[str, Any]] = []
    with out.open("wb") as file:
        lines = await relay_into(file.fileno(), [whole, b'{"event": "exch'], records)
    assert out.read_bytes() == whole
    assert len(records) == 1
    assert lines.lost == 1


async def test_a_line_whose_end_does_not_come_within_the_bound_is_dropped_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "MAX_LINE_BYTES", 64)
    after = orjson.dumps({"event": "exchange", "id": "after"}) + b"\n"
    out = tmp_path / "out.jsonl"
    records: list[dict[str, Any]] = []
    with out.open("wb") as file, capture_logs() as logs:
        lines = relay.LineRelay(file.fileno(), 1 << 20, records.append, oplog.get())
        worker = relay._Lines(lines, asyncio.get_running_loop().create_future())
        for piece in (b"x" * 50, b"y" * 50, b"z" * 50 + b"\n" + after):  # three reads
            worker.data_received(piece)
    assert out.read_bytes() == after  # nothing of the long line, not even its end
    assert [r["id"] for r in records] == ["after"]
    assert lines.lost == 1
    assert [e["records"] for e in logs if e["event"] == "log_records_lost"] == [1]


async def test_an_output_that_refuses_lines_costs_them_counted_not_the_relay() -> None:
    records: list[dict[str, Any]] = []
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        lines = await relay_into(full, [b'{"id": 1}\n{"id": 2}\n'], records)
    finally:
        os.close(full)
    assert lines.lost == 2
    assert len(records) == 2  # counted for the live report all the same


async def test_a_pipe_nobody_reads_yet_holds_up_nothing() -> None:
    read_end, write_end = os.pipe()
    records: list[dict[str, Any]] = []
    line = b'{"pad": "' + b"p" * 1000 + b'"}\n'
    lines = relay.LineRelay(write_end, 4096, records.append, oplog.get())
    for _ in range(200):  # 200 KB: more than the pipe and the bound hold
        lines.lines(line)
    assert lines.lost > 0
    reading = asyncio.ensure_future(asyncio.to_thread(read_fd_to_end, read_end))
    await lines.close(5)
    os.close(write_end)
    written = (await reading).splitlines()
    os.close(read_end)
    assert len(written) + lines.lost == 200
    assert len(records) == 200


async def test_a_reload_changes_how_much_may_wait_for_the_reader() -> None:
    read_end, write_end = os.pipe()
    line = b'{"pad": "' + b"p" * 1000 + b'"}\n'
    lines = relay.LineRelay(write_end, 4096, lambda _: None, oplog.get())
    lines.configure(1 << 20)  # 200 KB now wait in full
    for _ in range(200):
        lines.lines(line)
    assert lines.lost == 0
    reading = asyncio.ensure_future(asyncio.to_thread(read_fd_to_end, read_end))
    await lines.close(5)
    os.close(write_end)
    assert len((await reading).splitlines()) == 200
    os.close(read_end)
