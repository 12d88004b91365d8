import gzip
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from shadowproxy.report.cli import main
from shadowproxy.report.synthetic import DEFAULT_START, exchange_record, generate
from shadowproxy.report.timestamps import format_ts
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[2]
WriteLog = Callable[..., Path]
BARS = ["--max-mismatch-rate", "0.05", "--max-error-rate", "0.05", "--max-p99-latency-ratio", "1.5"]


@pytest.fixture
def healthy(write_log: WriteLog) -> Path:
    return write_log("healthy.jsonl", [exchange_record(ts=DEFAULT_START + i) for i in range(1200)])


@pytest.fixture
def failing(write_log: WriteLog) -> Path:
    records = [exchange_record(ts=DEFAULT_START + i) for i in range(1000)]
    records += [
        exchange_record(endpoint="POST /orders", outcome="candidate_error", error="timeout")
    ] * 100
    return write_log("failing.jsonl.gz", records)


def test_report_prints_a_table(healthy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(healthy)]) == 0
    out = capsys.readouterr().out
    assert "GET /users/{id}" in out
    assert "1,200" in out


def test_report_json_merges_logs_and_filters(
    healthy: Path, failing: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(healthy), str(failing), "--json"]) == 0
    data = orjson.loads(capsys.readouterr().out)
    assert data["overall"]["compared"] == 2300
    assert data["endpoints"][0]["endpoint"] == "POST /orders"

    since = format_ts(DEFAULT_START + 100)
    until = format_ts(DEFAULT_START + 200)
    args = ["report", str(healthy), str(failing), "--json", "--since", since, "--until", until]
    assert main([*args, "--endpoint", "GET /users/*"]) == 0
    data = orjson.loads(capsys.readouterr().out)
    assert data["overall"]["compared"] == 200  # 100 seconds from each log
    assert data["window"]["endpoints"] == ["GET /users/*"]
    assert data["window"]["since"] == since
    assert data["input"]["filtered_out"] == 2100


def test_relative_since_counts_back_from_now(
    write_log: WriteLog, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    old = [exchange_record(ts=now - 7200)] * 3
    recent = [exchange_record(ts=now - 600, endpoint="GET /recent")] * 2
    log = write_log("times.jsonl", [*old, *recent])
    assert main(["report", str(log), "--json", "--since", "1h"]) == 0
    data = orjson.loads(capsys.readouterr().out)
    assert [e["endpoint"] for e in data["endpoints"]] == ["GET /recent"]
    assert main(["report", str(log), "--json", "--until", "30m"]) == 0
    assert orjson.loads(capsys.readouterr().out)["overall"]["compared"] == 3


def test_report_writes_html(
    healthy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "out" / "report.html"
    target.parent.mkdir()
    assert main(["report", str(healthy), "--html", str(target)]) == 0
    assert target.read_text().startswith("<!doctype html>")
    assert f"wrote {target}" in capsys.readouterr().err
    assert main(["report", str(healthy), "--html", str(tmp_path / "nope" / "r.html")]) == 2
    assert "error:" in capsys.readouterr().err


def test_verdict_pass_fail_and_too_little_data(
    healthy: Path, failing: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verdict", str(healthy), *BARS, "--min-samples", "1000"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out
    assert out.rstrip().endswith("all bars met")

    assert main(["verdict", str(failing), *BARS, "--min-samples", "50"]) == 1
    out = capsys.readouterr().out
    assert "error rate" in out
    assert "FAIL" in out

    assert main(["verdict", str(healthy), *BARS, "--min-samples", "5000"]) == 2
    assert "INSUFFICIENT DATA" in capsys.readouterr().out

    code = main(["verdict", str(healthy), *BARS, "--endpoint", "GET /nothing", "--json"])
    assert code == 2
    assert orjson.loads(capsys.readouterr().out)["status"] == "insufficient_data"


def test_verdict_json(failing: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verdict", str(failing), *BARS, "--json"]) == 1
    data = orjson.loads(capsys.readouterr().out)
    assert data["status"] == "fail"
    orders = next(e for e in data["endpoints"] if e["endpoint"] == "POST /orders")
    assert orders["status"] == "fail"


def test_verdict_needs_a_bar(healthy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verdict", str(healthy)]) == 2
    assert "give at least one bar" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["report", "verdict"])
def test_unreadable_input_is_exit_2_without_traceback(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bars = BARS if command == "verdict" else []
    for target in (tmp_path / "missing.jsonl", tmp_path):
        assert main([command, str(target), *bars]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"shadowproxy {command}: error: {target}")
        assert "Traceback" not in err


def test_bad_arguments_exit_2(healthy: Path) -> None:
    for argv in (
        ["verdict", str(healthy), "--max-mismatch-rate", "2"],
        ["verdict", str(healthy), "--max-p99-latency-ratio", "0"],
        ["report", str(healthy), "--since", "last tuesday"],
        ["report"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2


def test_corrupted_lines_warn_once(write_log: WriteLog, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_log("c.jsonl", [exchange_record()] * 3, extra_lines=[b"{broken\n"] * 5)
    assert main(["report", str(log), "--json"]) == 0
    captured = capsys.readouterr()
    assert orjson.loads(captured.out)["input"]["corrupted"] == 5
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert warnings == [
        f"shadowproxy report: warning: skipped 5 corrupted line(s) that are not JSON objects "
        f"(first: {log}, line 4)"
    ]


def run_module(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "shadowproxy.report", *args],
        input=stdin,
        capture_output=True,
        timeout=50,
        check=False,
        cwd=REPO,
    )


def test_module_entry_reads_gzip_from_stdin_with_a_file(healthy: Path) -> None:
    records = b"".join(orjson.dumps(r) + b"\n" for r in generate(500, seed=4))
    result = run_module("report", "--json", str(healthy), "-", stdin=gzip.compress(records))
    assert result.returncode == 0, result.stderr
    data = orjson.loads(result.stdout)
    assert data["input"]["sources"] == [str(healthy), "stdin"]
    assert data["overall"]["compared"] == 1200 + sum(
        1 for r in generate(500, seed=4) if r["event"] == "exchange"
    )


def test_module_entry_verdict_exit_codes(healthy: Path, failing: Path) -> None:
    assert run_module("verdict", str(healthy), *BARS).returncode == 0
    assert run_module("verdict", str(failing), *BARS).returncode == 1
    missing = run_module("verdict", "/nonexistent/log.jsonl", *BARS)
    assert missing.returncode == 2
    assert b"no such file" in missing.stderr
    assert b"Traceback" not in missing.stderr


def main_cli_registers_us() -> bool:
    cli = REPO / "shadowproxy" / "cli.py"
    return cli.exists() and "report" in cli.read_text() and "register" in cli.read_text()


@pytest.mark.skipif(not main_cli_registers_us(), reason="the main CLI does not register report yet")
def test_installed_console_script(healthy: Path, failing: Path) -> None:
    script = Path(sys.executable).with_name("shadowproxy")
    assert script.exists(), f"{script} is not installed"
    env = {**os.environ, "COLUMNS": "200"}
    report = subprocess.run(
        [str(script), "report", str(healthy), "--json"], capture_output=True, timeout=50, env=env
    )
    assert report.returncode == 0, report.stderr
    assert orjson.loads(report.stdout)["overall"]["compared"] == 1200
    verdict = subprocess.run(
        [str(script), "verdict", str(failing), *BARS], capture_output=True, timeout=50, env=env
    )
    assert verdict.returncode == 1, verdict.stderr


def run_with_closed(stream: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The installed ``shadowproxy ARGS`` with ``stream`` (stdout or stderr) a pipe whose
    reader has already gone, as in ``| true``; the other stream is captured."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    script = Path(sys.executable).with_name("shadowproxy")
    closed = {stream: write_end}
    try:
        return subprocess.run(
            [str(script), *args],
            stdout=closed.get("stdout", subprocess.PIPE),
            stderr=closed.get("stderr", subprocess.PIPE),
            timeout=50,
            check=False,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize("output", [[], ["--json"]])
def test_verdict_status_survives_a_reader_that_went_away(
    failing: Path, healthy: Path, output: list[str]
) -> None:
    failed = run_with_closed("stdout", "verdict", str(failing), *BARS, *output)
    assert failed.returncode == 1
    assert failed.stderr == b""  # no traceback, no "Exception ignored" at exit
    too_few = run_with_closed("stdout", "verdict", str(healthy), *BARS, "--min-samples", "5000")
    assert too_few.returncode == 2
    passed = run_with_closed("stdout", "verdict", str(healthy), *BARS, *output)
    assert passed.returncode == 0


def test_verdict_status_survives_a_closed_stderr(write_log: WriteLog, failing: Path) -> None:
    corrupt = write_log("corrupt.jsonl", [exchange_record()] * 3, extra_lines=[b"{broken\n"])
    # The warning about the corrupt line cannot be written; the verdict still is.
    failed = run_with_closed("stderr", "verdict", str(failing), str(corrupt), *BARS)
    assert failed.returncode == 1
    assert b"FAIL" in failed.stdout
    missing = run_with_closed("stderr", "verdict", "/nonexistent/log.jsonl", *BARS)
    assert missing.returncode == 2


@pytest.mark.parametrize("ts", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
@pytest.mark.parametrize("command", ["report", "verdict"])
def test_out_of_range_timestamps_are_invalid_records(
    command: str, ts: str, healthy: Path, write_log: WriteLog
) -> None:
    odd = write_log("odd.jsonl", [exchange_record(), {**exchange_record(), "ts": ts}])
    bars = BARS if command == "verdict" else []
    result = run_cli(command, str(healthy), str(odd), "--json", *bars)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "skipped 1 exchange record(s)" in result.stderr
    if command == "report":
        data = orjson.loads(result.stdout)
        assert data["input"]["invalid"] == 1
        assert data["overall"]["compared"] == 1201


def test_a_record_in_year_1_is_reported(write_log: WriteLog) -> None:
    early = {**exchange_record(), "ts": "0001-01-01T00:00:00Z"}
    log = write_log("early.jsonl", [exchange_record(ts=DEFAULT_START), early])
    result = run_cli("report", str(log), "--json")
    assert result.returncode == 0, result.stderr
    data = orjson.loads(result.stdout)
    assert data["window"]["first"] == "0001-01-01T00:00:00.000Z"
    # The first time bucket is wide enough to start before year 1; it is shown from year 1.
    assert data["timeseries"]["buckets"][0]["start"] == "0001-01-01T00:00:00.000Z"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--since", "100000000d"),
        ("--since", "99999999999999999999w"),
        ("--until", "9999-12-31T23:59:59-14:00"),
    ],
)
@pytest.mark.parametrize("command", ["report", "verdict"])
def test_window_bounds_outside_the_calendar_are_usage_errors(
    command: str, option: str, value: str, healthy: Path
) -> None:
    bars = BARS if command == "verdict" else []
    result = run_cli(command, str(healthy), option, value, *bars)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f'argument {option}: "{value}" is outside the years 1 to 9999 UTC' in result.stderr


@pytest.mark.parametrize("command", ["report", "verdict"])
def test_a_log_named_twice_counts_once(command: str, healthy: Path) -> None:
    bars = BARS if command == "verdict" else []
    names = [str(healthy), str(healthy.with_suffix(".json*")), str(healthy)]
    result = run_cli(command, *names, "--json", *bars)
    assert result.returncode == 0, result.stderr
    data = orjson.loads(result.stdout)
    assert data["overall"]["compared"] == 1200


def test_html_and_json_cannot_both_take_stdout(healthy: Path) -> None:
    for order in (["--html", "-", "--json"], ["--json", "--html", "-"]):
        result = run_cli("report", str(healthy), *order)
        assert result.returncode == 2
        assert result.stdout == ""
        assert result.stderr == (
            "shadowproxy report: error: --html - and --json both write to stdout: write the "
            "HTML to a file, or leave one out\n"
        )
    alone = run_cli("report", str(healthy), "--html", "-")
    assert alone.returncode == 0
    assert alone.stdout.startswith("<!doctype html>")


@pytest.mark.parametrize("command", ["report", "verdict"])
def test_a_cut_gzip_log_warns_and_keeps_what_was_read(
    command: str, healthy: Path, tmp_path: Path
) -> None:
    cut = tmp_path / "rotating.jsonl.gz"
    cut.write_bytes(gzip.compress(healthy.read_bytes())[:-200])
    bars = BARS if command == "verdict" else []
    result = run_cli(command, str(cut), str(healthy), "--json", *bars)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == (
        f"shadowproxy {command}: warning: {cut}: the compressed data ends early "
        "(cut while being written or rotated?); read up to the cut"
    )
    if command == "report":
        compared = orjson.loads(result.stdout)["overall"]["compared"]
        assert 1200 + 1000 < compared < 2400
    else:
        assert orjson.loads(result.stdout)["status"] == "pass"
