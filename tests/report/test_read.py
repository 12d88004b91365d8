import gzip
import io
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from shadowproxy.report.filters import RecordFilter
from shadowproxy.report.read import ReportInputError, expand_sources, iter_lines, read_logs
from shadowproxy.report.synthetic import DEFAULT_START, exchange_record

WriteLog = Callable[..., Path]


def records(endpoint: str, count: int, start: float = DEFAULT_START) -> list[dict[str, object]]:
    return [exchange_record(endpoint=endpoint, ts=start + i) for i in range(count)]


def test_merges_plain_gzip_zstd_globs_and_stdin(
    write_log: WriteLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = write_log("a.jsonl", records("GET /a", 3))
    gz = write_log("b.jsonl.gz", records("GET /b", 4))
    (tmp_path / "logs").mkdir()
    for n in range(2):
        write_log(f"logs/side{n}.jsonl", records("GET /c", 5))
    zst = tmp_path / "d.log.zst"
    payload = b"".join(orjson.dumps(r) + b"\n" for r in records("GET /d", 2))
    zst.write_bytes(zstandard.ZstdCompressor().compress(payload))
    stdin_data = gzip.compress(payload.replace(b"GET /d", b"GET /e"))
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(stdin_data)))

    aggregator = read_logs([str(plain), str(gz), str(tmp_path / "logs" / "*.jsonl"), str(zst), "-"])

    counted = {name: stats.compared for name, stats in aggregator.endpoints.items()}
    assert counted == {"GET /a": 3, "GET /b": 4, "GET /c": 10, "GET /d": 2, "GET /e": 2}
    assert aggregator.counts.lines == 3 + 4 + 10 + 2 + 2


def test_corrupted_lines_are_counted_and_skipped(write_log: WriteLog) -> None:
    log = write_log(
        "mixed.jsonl",
        records("GET /a", 2),
        extra_lines=[b"not json\n", b"\n", b"   \n", b"[1, 2]\n", b'"text"\n', b'{"event": "exch'],
    )
    aggregator = read_logs([str(log)])
    assert aggregator.endpoints["GET /a"].compared == 2
    assert aggregator.counts.corrupted == 4  # the blank lines are not corrupt
    assert aggregator.counts.first_corrupted == f"{log}, line 3"


def test_line_numbers_continue_across_files(write_log: WriteLog) -> None:
    first = write_log("1.jsonl", records("GET /a", 2))
    second = write_log("2.jsonl", records("GET /a", 1), extra_lines=[b"{oops\n"])
    aggregator = read_logs([str(first), str(second)])
    assert aggregator.counts.first_corrupted == f"{second}, line 2"


def test_filters_apply_to_exchanges_only(write_log: WriteLog) -> None:
    log = write_log(
        "f.jsonl",
        [*records("GET /a", 10), *records("POST /b", 10), {"event": "config_reloaded"}],
    )
    keep = RecordFilter(since=DEFAULT_START + 2, until=DEFAULT_START + 7, endpoints=["GET /*"])
    aggregator = read_logs([str(log)], keep)
    assert {n: s.compared for n, s in aggregator.endpoints.items()} == {"GET /a": 5}
    assert aggregator.counts.filtered_out == 15
    assert aggregator.counts.other_events == 1


def test_chunk_boundaries_do_not_split_records() -> None:
    data = b"".join(b'{"n": %d}\n' % i for i in range(100_000)) + b'{"n": "last"}'
    lines = list(iter_lines(io.BytesIO(data)))
    assert len(lines) == 100_001
    assert lines[-1] == b'{"n": "last"}'
    assert lines[54_321] == b'{"n": 54321}'


def test_missing_file_and_empty_glob_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ReportInputError, match="no such file"):
        expand_sources([str(tmp_path / "missing.jsonl")])
    with pytest.raises(ReportInputError, match="no file matches"):
        expand_sources([str(tmp_path / "*.jsonl")])
    with pytest.raises(ReportInputError, match="only once"):
        expand_sources(["-", "-"])


def test_unreadable_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ReportInputError, match="cannot open"):
        read_logs([str(tmp_path)])  # a directory
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(b'{"event": "x"}\n' * 1000)[:10] + b"\xff" * 100)
    with pytest.raises(ReportInputError, match="cannot read"):
        read_logs([str(broken)])


def test_a_cut_gzip_log_is_read_up_to_the_cut(write_log: WriteLog, tmp_path: Path) -> None:
    whole = b"".join(orjson.dumps(r) + b"\n" for r in records("GET /a", 200_000))
    cut = tmp_path / "rotating.jsonl.gz"
    cut.write_bytes(gzip.compress(whole)[:-2000])  # the end of a member that is still written
    there = zlib.decompressobj(wbits=31).decompress(cut.read_bytes()).count(b"\n")
    after = write_log("after.jsonl", records("GET /b", 3), extra_lines=[b"{oops\n"])
    aggregator = read_logs([str(cut), str(after)])
    assert 190_000 < there < 200_000
    assert aggregator.endpoints["GET /a"].compared == there  # every whole line before the cut
    assert aggregator.endpoints["GET /b"].compared == 3
    assert aggregator.counts.truncated == [str(cut)]
    assert aggregator.counts.first_corrupted == f"{after}, line 4"


def test_a_file_named_twice_is_read_once(
    write_log: WriteLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = write_log("a.jsonl", records("GET /a", 3))
    second = write_log("b.jsonl", records("GET /b", 2))
    (tmp_path / "link.jsonl").symlink_to(first)
    names = [str(second), str(tmp_path / "*.jsonl"), str(first), str(tmp_path / "link.jsonl")]
    assert expand_sources(names) == [str(second), str(first)]  # the first occurrences, in order
    with first.open("rb") as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        assert expand_sources([str(first), "-", str(second)]) == [str(first), str(second)]
        assert expand_sources(["-", str(first)]) == ["-"]
    aggregator = read_logs(names)
    assert {n: s.compared for n, s in aggregator.endpoints.items()} == {"GET /b": 2, "GET /a": 3}


class _Pieces:
    """A stream handing over at most ``size`` bytes per read, as gzip's read1 does."""

    def __init__(self, data: bytes, size: int) -> None:
        self._data, self._size, self._at = data, size, 0

    def read(self, _: int = -1) -> bytes:
        piece = self._data[self._at : self._at + self._size]
        self._at += len(piece)
        return piece


@given(st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"\n")), st.integers(1, 64))
def test_lines_come_whole_however_the_stream_is_cut(data: bytes, size: int) -> None:
    expected = data.split(b"\n")
    if expected[-1] == b"":
        expected.pop()
    assert list(iter_lines(_Pieces(data, size))) == expected
