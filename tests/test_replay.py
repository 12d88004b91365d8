"""Replay: captured requests against a candidate (and live backends), paced, logged, judged."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from shadowproxy.config import CandidateBackend, DiffConfig, LogConfig, NoiseConfig
from shadowproxy.har import Captured, build_entry, read_entries
from shadowproxy.noise import NoiseModel
from shadowproxy.record import OUTPUT_DRAIN_TIMEOUT, LogWriter
from shadowproxy.redact import Redactor
from shadowproxy.replay import Pacer, Replayer, Targets
from shadowproxy.replay.engine import request_headers
from tests.conftest import Backend, RunningProxy, read_fd_to_end
from tests.hardening.support import exchange as raw_exchange

MakeProxy = Callable[..., Awaitable[RunningProxy]]
Serve = Callable[..., Awaitable[Backend]]
COMMAND_TIMEOUT = 60


def json_answer(
    document: dict[str, Any] | Callable[[web.BaseRequest], dict[str, Any]],
) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        body = document(request) if callable(document) else document
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    return answer


def entry(
    number: int,
    *,
    method: str = "GET",
    body: dict[str, Any] | None = None,
    started_at: float | None = None,
    request_body: bytes = b"",
) -> dict[str, Any]:
    response = orjson.dumps(body if body is not None else {"n": number, "price": 10})
    return build_entry(
        Captured(
            id=f"r{number}",
            endpoint=f"{method} /items/{{id}}",
            started_at=started_at if started_at is not None else 1_700_000_000 + number,
            method=method,
            scheme="http",
            raw_path=f"/items/{number}",
            http_version="HTTP/1.1",
            request_headers=(("Host", "shop.test"), ("Authorization", "Bearer secret")),
            request_body=request_body,
            request_size=len(request_body),
            status=200,
            reason="OK",
            response_headers=(("Content-Type", "application/json"),),
            response_body=response,
            response_size=len(response),
            latency_ms=2.0,
        ),
        Redactor([]),
        1 << 20,
    )


def write_capture(path: Path, entries: Sequence[dict[str, Any]], *, corrupt_at: int = -1) -> Path:
    with path.open("wb") as out:
        for index, item in enumerate(entries):
            if index == corrupt_at:
                out.write(b'{"startedDateTime": "2024-01-01T00:00:00Z", "request": {\n')
            out.write(orjson.dumps(item) + b"\n")
    return path


async def replay(
    paths: Sequence[Path],
    targets: Targets,
    **options: Any,
) -> tuple[list[dict[str, Any]], Replayer]:
    records: list[dict[str, Any]] = []
    options.setdefault("diff", DiffConfig(workers=0))
    replayer = Replayer(targets, on_record=records.append, **options)
    await replayer.run(read_entries([str(p) for p in paths], replayer.stats.read))
    return records, replayer


def backend(url: str) -> CandidateBackend:
    return CandidateBackend(url=url, timeout=5)


async def test_a_capture_from_the_proxy_replays_with_exactly_the_changed_field(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    def document(request: web.BaseRequest) -> dict[str, Any]:
        return {"path": request.path, "price": 10, "owner": {"email": "a@b.example"}}

    primary = await serve(json_answer(document))
    candidate = await serve(json_answer(document))
    capture = tmp_path / "capture.jsonl"
    running = await make_proxy(
        primary.url,
        candidate.url,
        capture={"path": str(capture)},
        log={"redact": ["/owner/email"]},
    )
    for number in range(10):
        async with client.get(f"{running.url}/items/{number}?v=1") as response:
            assert response.status == 200
    assert running.proxy.capture is not None
    await running.proxy.capture.close()

    def changed(request: web.BaseRequest) -> dict[str, Any]:
        # One field differs; the redacted one is sent for real and must not count.
        price = 11 if request.path == "/items/3" else 10
        return {"path": request.path, "price": price, "owner": {"email": "a@b.example"}}

    build = await serve(json_answer(changed))
    records, replayer = await replay([capture], Targets(candidate=backend(build.url)))

    assert len(records) == 10
    by_path = {r["path"]: r for r in records}
    mismatched = by_path.pop("/items/3?v=1")
    assert mismatched["outcome"] == "mismatch"
    assert mismatched["difference_count"] == 1
    assert [
        (d["where"], d["path"], d["primary"], d["candidate"]) for d in mismatched["differences"]
    ] == [("body", "/price", 10, 11)]
    assert {r["outcome"] for r in by_path.values()} == {"match"}
    assert replayer.stats.matched == 9
    assert [s.raw_path for s in build.seen] == [f"/items/{n}?v=1" for n in range(10)]
    assert all(s.header("X-Shadow-Request") == "1" for s in build.seen)


async def test_redacted_and_hop_by_hop_headers_are_not_sent() -> None:
    headers = request_headers(
        (
            ("Authorization", "[redacted]"),
            ("Connection", "keep-alive"),
            ("Content-Length", "12"),
            ("Accept", "application/json"),
            ("X-Tenant", "a"),
        ),
        overrides=(("Authorization", "Bearer test-token"), ("x-tenant", "b")),
    )
    assert list(headers.items()) == [
        ("Accept", "application/json"),
        ("Authorization", "Bearer test-token"),
        ("x-tenant", "b"),
    ]


async def test_requests_go_out_at_the_given_rate(serve: Serve, tmp_path: Path) -> None:
    arrivals: list[float] = []

    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        arrivals.append(time.monotonic())
        return web.Response(
            body=orjson.dumps({"n": 1, "price": 10}), content_type="application/json"
        )

    candidate = await serve(answer)
    capture = write_capture(tmp_path / "c.jsonl", [entry(1) for _ in range(200)])
    records, _ = await replay(
        [capture], Targets(candidate=backend(candidate.url)), pacer=Pacer(rate=100)
    )
    assert len(records) == 200
    measured = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert measured == pytest.approx(100, rel=0.10)


async def test_speed_follows_the_recorded_timing(serve: Serve, tmp_path: Path) -> None:
    arrivals: list[float] = []

    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        arrivals.append(time.monotonic())
        return web.Response(body=b"{}", content_type="application/json")

    candidate = await serve(answer)
    # 21 requests recorded 0.1 s apart: 2 s of traffic, replayed in 1 s at speed 2.
    entries = [entry(n, body={}, started_at=1_700_000_000 + n * 0.1) for n in range(21)]
    capture = write_capture(tmp_path / "c.jsonl", entries)
    await replay([capture], Targets(candidate=backend(candidate.url)), pacer=Pacer(speed=2))
    assert arrivals[-1] - arrivals[0] == pytest.approx(1.0, rel=0.10)


async def test_in_flight_requests_are_bounded(serve: Serve, tmp_path: Path) -> None:
    in_flight = 0
    peak = 0
    release = asyncio.Event()

    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if peak == 4:
            release.set()  # the bound is reached: let everyone through from now on
        await release.wait()
        in_flight -= 1
        return web.Response(body=b"{}", content_type="application/json")

    candidate = await serve(answer)
    capture = write_capture(tmp_path / "c.jsonl", [entry(n, body={}) for n in range(40)])
    records, _ = await replay([capture], Targets(candidate=backend(candidate.url)), concurrency=4)
    assert len(records) == 40
    assert peak == 4


async def test_unsafe_methods_are_replayed_only_when_allowed(serve: Serve, tmp_path: Path) -> None:
    candidate = await serve(json_answer({}))
    entries = [
        entry(1, body={}),
        entry(2, method="POST", body={}, request_body=b'{"qty": 1}'),
        entry(3, method="DELETE", body={}),
    ]
    capture = write_capture(tmp_path / "c.jsonl", entries)
    records, replayer = await replay([capture], Targets(candidate=backend(candidate.url)))
    assert [r["method"] for r in records] == ["GET"]
    assert sum(replayer.stats.skipped.values()) == 2

    records, _ = await replay(
        [capture], Targets(candidate=backend(candidate.url)), allow_unsafe=True
    )
    assert sorted(r["method"] for r in records) == ["DELETE", "GET", "POST"]
    post = next(s for s in candidate.seen if s.method == "POST")
    assert post.body == b'{"qty": 1}'
    assert post.header("X-Shadow-Request") == "1"


async def test_with_a_live_primary_the_live_answers_are_compared(
    serve: Serve, tmp_path: Path
) -> None:
    live = await serve(json_answer({"version": 2}))
    candidate = await serve(json_answer({"version": 2}))
    capture = write_capture(tmp_path / "c.jsonl", [entry(n, body={"version": 1}) for n in range(5)])
    records, _ = await replay(
        [capture], Targets(candidate=backend(candidate.url), primary=backend(live.url))
    )
    assert [r["outcome"] for r in records] == ["match"] * 5  # the recording says version 1
    assert len(live.seen) == 5
    assert all(r["tags"] == {"replay": "live"} for r in records)


async def test_a_secondary_tells_noise_from_real_differences(serve: Serve, tmp_path: Path) -> None:
    counter = itertools.count()

    def noisy(price: int) -> Callable[[web.BaseRequest], dict[str, Any]]:
        return lambda request: {"generated": next(counter), "price": price}

    primary = await serve(json_answer(noisy(10)))
    secondary = await serve(json_answer(noisy(10)))
    candidate = await serve(json_answer(noisy(12)))
    capture = write_capture(tmp_path / "c.jsonl", [entry(n, body={}) for n in range(10)])
    records, _ = await replay(
        [capture],
        Targets(
            candidate=backend(candidate.url),
            primary=backend(primary.url),
            secondary=backend(secondary.url),
        ),
        noise=NoiseModel.from_config(NoiseConfig()),
        concurrency=1,
    )
    assert len(records) == 10
    for record in records:
        assert [d["path"] for d in record["differences"]] == ["/price"]
        assert [d["path"] for d in record["noise"]] == ["/generated"]
        assert record["secondary"]["status"] == 200


async def test_a_browser_har_can_be_replayed(serve: Serve, tmp_path: Path) -> None:
    candidate = await serve(json_answer({"items": []}))
    document = {
        "log": {
            "version": "1.2",
            "creator": {"name": "WebInspector", "version": "1"},
            "entries": [entry(1, body={"items": []}), entry(2, body={"items": [1]})],
        }
    }
    har = tmp_path / "browser.har"
    har.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    records, _ = await replay([har], Targets(candidate=backend(candidate.url)))
    assert sorted(r["outcome"] for r in records) == ["match", "mismatch"]


# --- the command ----------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shadowproxy", "replay", *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The command in a child process, while this loop keeps serving the backends."""
    return await asyncio.to_thread(run_cli, *args)


def read_log(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


async def test_a_corrupt_line_is_reported_and_skipped(serve: Serve, tmp_path: Path) -> None:
    candidate = await serve(json_answer({"n": 1, "price": 10}))
    capture = write_capture(tmp_path / "c.jsonl", [entry(1) for _ in range(4)], corrupt_at=2)
    log = tmp_path / "log.jsonl"
    result = await cli(str(capture), "--candidate", candidate.url, "--log", str(log))
    assert result.returncode == 0, result.stderr
    assert "skipped 1 corrupt line(s)" in result.stderr
    assert f"{capture}, line 3" in result.stderr
    assert len(read_log(log)) == 4


async def test_verdict_makes_it_one_ci_step(serve: Serve, tmp_path: Path) -> None:
    same = await serve(json_answer({"n": 1, "price": 10}))
    different = await serve(json_answer({"n": 1, "price": 99}))
    capture = write_capture(tmp_path / "c.jsonl", [entry(1) for _ in range(20)])
    bars = ("--verdict", "--max-mismatch-rate", "0.01", "--min-samples", "10")

    passing = await cli(str(capture), "--candidate", same.url, "--log", str(tmp_path / "a"), *bars)
    assert passing.returncode == 0, passing.stderr
    assert "verdict: PASS" in passing.stdout

    failing = await cli(
        str(capture), "--candidate", different.url, "--log", str(tmp_path / "b"), *bars, "--json"
    )
    assert failing.returncode == 1, failing.stderr
    assert orjson.loads(failing.stdout)["status"] == "fail"

    # The log on stdout: the verdict goes to stderr, so the log stays clean JSON lines.
    piped = await cli(str(capture), "--candidate", same.url, "--no-progress", *bars)
    assert piped.returncode == 0, piped.stderr
    assert len([orjson.loads(line) for line in piped.stdout.splitlines()]) == 20
    assert "verdict: PASS" in piped.stderr


def run_cli_with_closed(stream: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``replay ARGS`` with ``stream`` a pipe whose reader has gone, as in ``| true``."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "shadowproxy", "replay", *args],
            stdout=write_end if stream == "stdout" else subprocess.DEVNULL,
            stderr=write_end if stream == "stderr" else subprocess.DEVNULL,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
async def test_a_failed_verdict_stays_failed_when_nobody_reads_it(
    serve: Serve, tmp_path: Path, stream: str
) -> None:
    different = await serve(json_answer({"n": 1, "price": 99}))
    capture = write_capture(tmp_path / "c.jsonl", [entry(1) for _ in range(20)])
    bars = ("--verdict", "--max-mismatch-rate", "0.01", "--min-samples", "10", "--no-progress")
    result = await asyncio.to_thread(
        run_cli_with_closed, stream, str(capture), "--candidate", different.url,
        "--log", str(tmp_path / "log.jsonl"), *bars,
    )  # fmt: skip
    assert result.returncode == 1


async def test_the_log_reads_with_report_unchanged(serve: Serve, tmp_path: Path) -> None:
    candidate = await serve(json_answer({"n": 1, "price": 11}))
    capture = write_capture(tmp_path / "c.jsonl", [entry(n) for n in range(3)])
    log = tmp_path / "log.jsonl"
    result = await cli(str(capture), "--candidate", candidate.url, "--log", str(log))
    assert result.returncode == 0, result.stderr
    report = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "shadowproxy", "report", str(log), "--json"],
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    summary = orjson.loads(report.stdout)
    assert summary["overall"]["compared"] == 3
    assert summary["overall"]["mismatches"] == 3


async def test_progress_lines_when_not_a_terminal(serve: Serve, tmp_path: Path) -> None:
    candidate = await serve(json_answer({"n": 1, "price": 10}))
    capture = write_capture(tmp_path / "c.jsonl", [entry(1) for _ in range(40)])
    result = await cli(
        str(capture), "--candidate", candidate.url, "--log", str(tmp_path / "log"),
        "--rate", "80", "--progress-interval", "0.1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if "req/s, match" in line]
    assert progress, result.stderr
    assert "/40 entries" in progress[0]
    assert "ETA" in progress[0]
    assert "40 compared" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--secondary", "http://127.0.0.1:9"), "--secondary needs --primary"),
        (("--verdict",), "give at least one bar"),
        (("--max-error-rate", "0.1"), "only with --verdict"),
        (("--rate", "0"), "must be greater than 0"),
    ],
)
def test_unusable_arguments_exit_2(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    capture = write_capture(tmp_path / "c.jsonl", [entry(1)])
    result = run_cli(str(capture), "--candidate", "http://127.0.0.1:9", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_diff_only_config_file_applies(tmp_path: Path) -> None:
    from shadowproxy.replay.cli import load_rules

    rules = tmp_path / "rules.yaml"
    rules.write_text("diff:\n  ignore: [/price]\nlog:\n  redact: [/secret]\n")
    config = load_rules(str(rules))
    assert config.effective_diff().ignore == ["/price"]
    assert config.log.redact == ["/secret"]


def test_a_config_file_is_read_as_the_proxy_reads_it(tmp_path: Path) -> None:
    from shadowproxy.config import ConfigError
    from shadowproxy.replay.cli import load_rules

    rules = tmp_path / "rules.yaml"
    rules.write_text("diff: {ignore: [/a]}\ndiff: {ignore: [/b]}\n")
    with pytest.raises(ConfigError, match="the key 'diff' is given twice"):
        load_rules(str(rules))


async def test_a_log_that_cannot_be_opened_stops_the_replay_before_it_starts(
    serve: Serve, tmp_path: Path
) -> None:
    candidate = await serve(json_answer({"n": 1, "price": 10}))
    capture = write_capture(tmp_path / "c.jsonl", [entry(1) for _ in range(3)])
    log = tmp_path / "missing" / "log.jsonl"
    result = await cli(str(capture), "--candidate", candidate.url, "--log", str(log))
    assert result.returncode == 2
    assert f"{log}: cannot open the log: No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr
    assert candidate.seen == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
async def test_records_lost_writing_the_log_fail_the_replay_and_its_verdict(
    serve: Serve, tmp_path: Path
) -> None:
    candidate = await serve(json_answer({"n": 1, "price": 10}))
    capture = write_capture(tmp_path / "c.jsonl", [entry(1) for _ in range(20)])
    bars = ("--verdict", "--max-mismatch-rate", "0.01", "--min-samples", "10")
    result = await cli(str(capture), "--candidate", candidate.url, "--log", "/dev/full", *bars)
    assert result.returncode == 2, result.stderr
    assert "20 records lost writing the log (disk full: 20)" in result.stderr
    assert "/dev/full: the log is incomplete; no verdict is given" in result.stderr
    assert "PASS" not in result.stdout + result.stderr


async def test_a_reader_of_standard_output_that_is_behind_is_waited_for(
    serve: Serve, tmp_path: Path
) -> None:
    candidate = await serve(json_answer({"n": 1, "price": 10}))
    entries = 1000  # about 400 KB of log lines: more than a pipe holds
    capture = write_capture(tmp_path / "c.jsonl", [entry(1) for _ in range(entries)])
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shadowproxy", "replay", str(capture),
        "--candidate", candidate.url, "--no-progress",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    while len(candidate.seen) < entries:  # the replay is done but for its log
        candidate.arrived.clear()
        await candidate.arrived.wait()
    # Nobody reads standard output for longer than a closing proxy's log would wait.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(process.wait()), OUTPUT_DRAIN_TIMEOUT + 1)
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert len(out.splitlines()) == entries
    assert b"lost" not in err


async def test_a_lossless_log_holds_its_writer_back_while_the_reader_is_behind() -> None:
    read_end, write_end = os.pipe()
    writer = LogWriter(LogConfig(path=f"/dev/fd/{write_end}", max_buffer_bytes=1024), lossless=True)
    writer.start()
    line = {"ts": "t", "event": "exchange", "pad": "p" * 1000}
    for _ in range(300):  # 300 KB: more than the pipe and the bound hold
        writer.write(line)
    writer.flush()
    room = asyncio.ensure_future(writer.room())
    done, _ = await asyncio.wait({room}, timeout=0.2)
    assert not done  # nothing is dropped: the caller waits
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(read_fd_to_end(read_end)))
    reader.start()
    await asyncio.wait_for(room, 10)
    await writer.close()
    os.close(write_end)
    await asyncio.to_thread(reader.join, 10)
    os.close(read_end)
    assert len(received[0].splitlines()) == 300
    assert writer.lost == 0


async def test_query_redaction_from_the_config_applies_to_the_replay_log(
    serve: Serve, tmp_path: Path
) -> None:
    candidate = await serve(json_answer({"n": 1, "price": 11}))
    recorded = entry(1)
    recorded["request"]["url"] = "http://shop.test/items/1?Session_ID=R-SECRET&page=2"
    recorded["request"]["_target"] = "/items/1?Session_ID=R-SECRET&page=2"
    capture = write_capture(tmp_path / "c.jsonl", [recorded])
    rules = tmp_path / "rules.yaml"
    rules.write_text("log:\n  redact_query: [session_id]\n")
    log = tmp_path / "log.jsonl"
    result = await cli(
        str(capture), "--candidate", candidate.url, "--config", str(rules), "--log", str(log)
    )
    assert result.returncode == 0, result.stderr
    [logged] = read_log(log)
    assert logged["path"] == "/items/1?Session_ID=[redacted]&page=2"
    assert candidate.seen[0].raw_path == "/items/1?Session_ID=R-SECRET&page=2"  # sent as recorded


def held(release: asyncio.Event) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """A candidate that answers once ``release`` is set."""

    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        await release.wait()
        return web.Response(body=b'{"n": 1, "price": 10}', content_type="application/json")

    return answer


async def arrivals(backend: Backend, count: int) -> None:
    while len(backend.seen) < count:
        backend.arrived.clear()
        await backend.arrived.wait()


async def test_nothing_is_sent_after_a_stop(serve: Serve, tmp_path: Path) -> None:
    release = asyncio.Event()
    candidate = await serve(held(release))
    capture = write_capture(tmp_path / "c.jsonl", [entry(1) for _ in range(5)])
    records: list[dict[str, Any]] = []
    replayer = Replayer(
        Targets(candidate=backend(candidate.url)),
        diff=DiffConfig(workers=0),
        on_record=records.append,
        concurrency=2,
    )
    running = asyncio.ensure_future(replayer.run(read_entries([str(capture)])))
    await arrivals(candidate, 2)  # every slot taken: the next entry waits for one
    replayer.stop()
    release.set()
    await asyncio.wait_for(running, 10)
    assert len(candidate.seen) == 2
    assert len(records) == 2  # the requests under way finished and were recorded


async def test_a_second_stop_cancels_the_requests_under_way(serve: Serve, tmp_path: Path) -> None:
    release = asyncio.Event()
    candidate = await serve(held(release))
    capture = write_capture(tmp_path / "c.jsonl", [entry(1) for _ in range(5)])
    records: list[dict[str, Any]] = []
    replayer = Replayer(
        Targets(candidate=CandidateBackend(url=candidate.url, timeout=60)),
        diff=DiffConfig(workers=0),
        on_record=records.append,
        concurrency=2,
    )
    running = asyncio.ensure_future(replayer.run(read_entries([str(capture)])))
    await arrivals(candidate, 2)
    replayer.stop()
    replayer.stop()
    stats = await asyncio.wait_for(running, 10)
    release.set()
    assert records == []
    assert stats.skipped == {"interrupted under way": 2}


async def test_ctrl_c_twice_ends_the_command_at_once(serve: Serve, tmp_path: Path) -> None:
    release = asyncio.Event()
    candidate = await serve(held(release))
    capture = write_capture(tmp_path / "c.jsonl", [entry(1) for _ in range(20)])
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shadowproxy", "replay", str(capture),
        "--candidate", candidate.url, "--concurrency", "4", "--timeout", "60",
        "--log", str(tmp_path / "log.jsonl"), "--no-progress",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await arrivals(candidate, 4)
        process.send_signal(signal.SIGINT)
        assert process.stderr is not None
        said = await asyncio.wait_for(process.stderr.readline(), 10)
        assert b"waiting for 4 request(s) under way (Ctrl-C again to cancel them)" in said
        process.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(process.communicate(), 10)
    finally:
        release.set()
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 130, err.decode()
    assert "4 not replayed (interrupted under way: 4)" in err.decode()
    assert len(candidate.seen) == 4


async def test_a_malformed_host_is_replayed_to_the_target_the_client_sent(
    serve: Serve, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    primary = await serve(json_answer({"n": 1}))
    mirrored = await serve(json_answer({"n": 1}))
    capture = tmp_path / "capture.jsonl"
    running = await make_proxy(primary.url, mirrored.url, capture={"path": str(capture)})
    for host, target in (("svc.example#frag", "/trail?"), ("svc.example/admin/delete?", "/x")):
        request = f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        answer = await raw_exchange(running.url, request.encode())
        assert answer.status == 200, answer.data
    assert running.proxy.capture is not None
    await running.proxy.capture.close()

    candidate = await serve(json_answer({"n": 1}))
    log = tmp_path / "log.jsonl"
    result = await cli(str(capture), "--candidate", candidate.url, "--log", str(log))
    assert result.returncode == 0, result.stderr
    assert [s.raw_path for s in candidate.seen] == ["/trail?", "/x"]
    assert [r["path"] for r in read_log(log)] == ["/trail?", "/x"]
