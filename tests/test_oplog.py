"""The operational log on a pipe whose reader is behind: lines dropped, counted, said."""

from __future__ import annotations

import io
import os
import sys
import threading

import orjson
import pytest

from shadowproxy import oplog
from tests.conftest import read_fd_to_end


def test_lines_beyond_the_buffer_are_dropped_then_counted_in_a_line_of_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read_end, write_end = os.pipe()
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(read_fd_to_end(read_end)))
    with open(write_end, "wb") as raw:
        monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(raw))
        monkeypatch.setattr(oplog, "MAX_BUFFER_BYTES", 4096)
        stderr = oplog._StandardError()
        line = orjson.dumps({"event": "x", "pad": "p" * 90}) + b"\n"
        for _ in range(2000):  # 200 KB: the pipe holds 64, the buffer 4: never a wait
            stderr.write(line)
        reader.start()  # the reader catches up
        assert stderr.wait_written(10)
        stderr.write(orjson.dumps({"event": "after"}) + b"\n")
        stderr.close()
    reader.join(10)
    events = [orjson.loads(text) for text in received[0].splitlines()]  # whole lines
    # Should the writer thread find room while lines are still coming, a count is said then
    # and a new one begins: every line is written or counted, once.
    counts = [e["lines"] for e in events if e["event"] == "log_lines_dropped"]
    assert counts
    assert all(count > 0 for count in counts)
    assert sum(e["event"] == "x" for e in events) + sum(counts) == 2000
    assert events[-2]["event"] == "log_lines_dropped"  # said before the next line
    assert events[-1] == {"event": "after"}
    os.close(read_end)


def test_a_throttled_count_says_the_first_at_once_then_sums_until_the_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1.0]  # just after boot: the clock may start near zero
    monkeypatch.setattr(oplog.time, "monotonic", lambda: now[0])
    said: list[tuple[int, str]] = []
    count = oplog.ThrottledCount(lambda n, reason: said.append((n, reason)), interval=60)
    count.add(2, "disk full")
    count.add(3, "disk full")
    now[0] += 30
    count.add(1, "disk full")
    assert said == [(2, "disk full")]
    now[0] += 31
    count.add(1, "reader behind")
    assert said == [(2, "disk full"), (5, "reader behind")]
    count.add(4, "reader behind")
    count.flush("at shutdown")
    count.flush("at shutdown")  # nothing left: nothing said
    assert said[-1] == (4, "at shutdown")
    assert len(said) == 3
