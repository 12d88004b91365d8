"""The supervisor's follower of the shared log file: appends, rotation and truncation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from shadowproxy import follow
from shadowproxy.follow import LogFollower


def lines(start: int, count: int) -> bytes:
    return b"".join(
        orjson.dumps({"ts": f"2026-11-28T00:00:{n % 60:02}Z", "n": n}) + b"\n"
        for n in range(start, start + count)
    )


class Seen:
    def __init__(self) -> None:
        self.numbers: list[int] = []

    def __call__(self, record: dict[str, Any]) -> None:
        self.numbers.append(record["n"])


def started(path: Path) -> tuple[LogFollower, Seen]:
    seen = Seen()
    follower = LogFollower(path, seen)
    follower._current = follower._open(at_end=True)  # start() without the polling task
    return follower, seen


def test_only_what_is_appended_after_the_start_is_read(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_bytes(lines(0, 5))
    follower, seen = started(log)
    with log.open("ab") as file:
        file.write(lines(5, 3) + b'{"n": 8')  # the last line not whole yet
    assert follower.poll() == 3
    with log.open("ab") as file:
        file.write(b"}\n")
    follower.poll()
    assert seen.numbers == [5, 6, 7, 8]


def test_lines_written_to_a_renamed_file_after_the_rotation_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """logrotate renames, and the writers go on writing to the old file until signalled."""
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"")
    follower, seen = started(log)
    writer = log.open("ab", buffering=0)
    writer.write(lines(0, 10))
    log.rename(tmp_path / "log.jsonl.1")
    log.write_bytes(lines(100, 2))  # a writer already reopened
    follower.poll()
    writer.write(lines(10, 5))  # another one not yet
    follower.poll()
    writer.close()
    assert sorted(seen.numbers) == [*range(15), 100, 101]
    monkeypatch.setattr(follow, "RETIRE_AFTER", 0.0)
    follower.poll()
    follower.poll()
    assert follower._retired == []  # a quiet old file is closed in the end


def test_a_file_truncated_and_refilled_between_polls_is_read_from_the_top(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"")
    follower, seen = started(log)
    log.write_bytes(lines(0, 100))
    follower.poll()
    # copytruncate, then more than before written again before the next poll
    with log.open("r+b") as file:
        file.truncate(0)
    log.write_bytes(lines(200, 150))
    follower.poll()
    assert seen.numbers == [*range(100), *range(200, 350)]


def test_a_file_that_does_not_exist_yet_is_read_once_created(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    follower, seen = started(log)
    assert follower.poll() == 0
    log.write_bytes(lines(0, 2))
    follower.poll()
    assert seen.numbers == [0, 1]
    os.remove(log)
    assert follower.poll() == 0


def test_a_fifo_is_not_followed(tmp_path: Path) -> None:
    """Opening a FIFO without a writer would block the supervisor; with one, steal its lines."""
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    follower, seen = started(fifo)
    assert follower._current is None
    assert follower.poll() == 0
    assert seen.numbers == []
