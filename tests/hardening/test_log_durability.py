"""The discrepancy log: size-based rotation (safe with several processes), a full disk or a
log that cannot be opened (the proxy serves on and counts what it loses), and whole lines
only, even when the process is killed in the middle of writing."""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from shadowproxy import record
from shadowproxy.config import LogConfig
from shadowproxy.record import LogWriter
from tests.e2e.conftest import ProxyProcess, StartProxy
from tests.hardening.support import MakeProxy, Serve, json_handler

pytestmark = pytest.mark.timeout(30)

PAD = "x" * 200


class Events:
    """Stands in for the operational log: keeps what was reported."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def _add(self, level: str, event: str, **fields: Any) -> None:
        self.lines.append((level, event, fields))

    def info(self, event: str, **fields: Any) -> None:
        self._add("info", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self._add("error", event, **fields)

    def named(self, event: str) -> list[dict[str, Any]]:
        return [fields for _, name, fields in self.lines if name == event]


def parsed_lines(*paths: Path) -> list[dict[str, Any]]:
    """Every line of the files, each of which must be a whole JSON object."""
    out = []
    for path in paths:
        for line in path.read_bytes().splitlines():
            value = orjson.loads(line)
            assert isinstance(value, dict)
            out.append(value)
    return out


def test_rotation_keeps_the_newest_files_each_within_the_size(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    events = Events()
    writer = LogWriter(LogConfig(path=str(path), max_bytes="4KiB", backups=2), oplog=events)
    writer.open()
    for index in range(200):
        writer.write({"event": "exchange", "id": index, "pad": PAD})
        if index % 5 == 4:
            writer.flush()
    writer.flush()
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["log.jsonl", "log.jsonl.1", "log.jsonl.2"]
    for file in files:
        assert file.stat().st_size <= 4096
    ids = [line["id"] for line in parsed_lines(path.with_name("log.jsonl.2"), *files[:2][::-1])]
    # The newest records survive, in order and without a gap.
    assert ids == list(range(ids[0], 200))
    assert len(events.named("log_rotated")) >= 2
    assert writer.lost == 0


def test_zero_backups_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    writer = LogWriter(LogConfig(path=str(path), max_bytes="1KiB", backups=0))
    writer.open()
    for index in range(50):
        writer.write({"event": "exchange", "id": index, "pad": PAD})
        writer.flush()
    assert [f.name for f in tmp_path.iterdir()] == ["log.jsonl"]
    assert parsed_lines(path)[-1]["id"] == 49


WRITER_PROCESS = textwrap.dedent(
    """
    import sys
    import time
    from shadowproxy.config import LogConfig
    from shadowproxy.record import LogWriter

    path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    writer = LogWriter(LogConfig(path=path, max_bytes="16KiB", backups=1000))
    writer.open()
    for index in range(count):
        writer.write({"event": "exchange", "id": f"{name}-{index}", "pad": "x" * 200})
        if index % 7 == 6:
            writer.flush()
            time.sleep(0.003)  # a flush now and then, as in the proxy, only quicker
    writer.flush()
    assert writer.lost == 0, writer.lost
    """
)


@pytest.mark.timeout(60)
def test_several_processes_rotate_one_file_without_losing_or_mixing_lines(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shared.jsonl"
    count, writers = 800, 4
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER_PROCESS, str(path), f"w{n}", str(count)],
            cwd=Path(__file__).resolve().parents[2],
        )
        for n in range(writers)
    ]
    for process in processes:
        assert process.wait(timeout=50) == 0
    files = sorted(tmp_path.glob("shared.jsonl*"))
    assert len(files) > 10  # it did rotate, many times
    lines = parsed_lines(*files)
    ids = [line["id"] for line in lines]
    assert len(ids) == len(set(ids)) == count * writers  # nothing lost, nothing twice
    # A process that has not reopened yet (or found another one rotating) appends its batch
    # to the renamed file, so a file may run a few batches over; never far.
    batch = 7 * 270
    assert max(f.stat().st_size for f in files) <= 16 * 1024 + writers * 3 * batch


def test_disk_full_counts_lost_records_and_says_so_once_a_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = Events()
    lost: list[int] = []
    writer = LogWriter(
        LogConfig(path="/dev/full", max_bytes="4KiB"), on_lost=lost.append, oplog=events
    )
    writer.open()
    for _ in range(3):
        writer.write({"event": "exchange", "pad": PAD})
        writer.write({"event": "exchange", "pad": PAD})
        writer.flush()
    assert writer.lost == 6
    assert sum(lost) == 6
    [report] = events.named("log_records_lost")
    assert report["records"] == 2
    assert report["reason"] == "disk full"
    now = record.time.monotonic()
    monkeypatch.setattr(record.time, "monotonic", lambda: now + record.LOSS_REPORT_INTERVAL + 1)
    writer.write({"event": "exchange", "pad": PAD})
    writer.flush()
    assert [r["records"] for r in events.named("log_records_lost")] == [2, 5]


async def test_proxy_serves_on_a_full_disk_and_counts_the_loss(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(json_handler(b'{"a": 1}'))
    candidate = await serve(json_handler(b'{"a": 2}'))
    proxy = await make_proxy(primary.url, candidate.url, log={"path": "/dev/full"})
    for _ in range(5):
        async with client.get(proxy.url + "/x") as response:
            assert response.status == 200
            assert await response.read() == b'{"a": 1}'
    await proxy.proxy.dispatcher.idle()
    proxy.proxy.writer.flush()
    metrics = proxy.proxy.metrics.render().decode()
    assert "shadowproxy_log_records_lost_total 5.0" in metrics


async def test_log_directory_removed_then_restored(
    serve: Serve,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(record, "REOPEN_INTERVAL", 0.0)
    directory = tmp_path / "logs"
    directory.mkdir()
    path = directory / "d.jsonl"
    primary = await serve(json_handler(b'{"a": 1}'))
    candidate = await serve(json_handler(b'{"a": 2}'))
    proxy = await make_proxy(primary.url, candidate.url, log={"path": str(path)})
    shutil.rmtree(directory)
    proxy.proxy.writer.reopen()  # what SIGHUP does; the directory is gone
    async with client.get(proxy.url + "/gone") as response:
        assert response.status == 200
    await proxy.proxy.dispatcher.idle()
    proxy.proxy.writer.flush()
    assert proxy.proxy.writer.lost == 1
    directory.mkdir()
    async with client.get(proxy.url + "/back") as response:
        assert response.status == 200
    await proxy.proxy.dispatcher.idle()
    proxy.proxy.writer.flush()
    assert [line["path"] for line in parsed_lines(path)] == ["/back"]
    metrics = proxy.proxy.metrics.render().decode()
    assert "shadowproxy_log_records_lost_total 1.0" in metrics


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to a read-only file")
def test_read_only_file_on_reopen_is_counted_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "ro.jsonl"
    events = Events()
    writer = LogWriter(LogConfig(path=str(path)), oplog=events)
    writer.open()
    path.chmod(0o444)
    writer.reopen()
    writer.write({"event": "exchange"})
    writer.flush()
    assert writer.lost == 1
    assert len(events.named("log_open_failed")) == 1


@pytest.mark.e2e
@pytest.mark.timeout(60)
async def test_sigkill_under_load_leaves_only_whole_lines(
    serve: Serve, start_proxy: StartProxy
) -> None:
    body = orjson.dumps({"items": [{"id": i, "name": "n" * 40} for i in range(30)]})
    primary = await serve(json_handler(body))
    candidate = await serve(json_handler(body.replace(b'"id":7', b'"id":8')))
    proxy = await start_proxy(
        primary.url, candidate.url, log={"flush_interval": 0.01}, diff={"workers": 0}
    )
    stop = asyncio.Event()

    async def load(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            try:
                async with session.get(proxy.url + "/items") as response:
                    await response.read()
            except aiohttp.ClientError:
                return

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(load(session)) for _ in range(16)]
        await proxy.wait_records(50)
        os.kill(proxy.pid, signal.SIGKILL)
        stop.set()
        await asyncio.gather(*tasks)
    assert await proxy.exited() == -signal.SIGKILL  # and its stderr read to the end
    raw = proxy.log_path.read_bytes()
    assert raw.endswith(b"\n")
    lines = parsed_lines(proxy.log_path)
    assert len([line for line in lines if line.get("event") == "exchange"]) >= 50


def test_a_failing_before_flush_hook_costs_no_record(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    events = Events()

    def publish() -> None:
        raise OSError("No space left on device")

    writer = LogWriter(LogConfig(path=str(path)), oplog=events, before_flush=publish)
    writer.open()
    for index in range(3):
        writer.write({"event": "exchange", "id": index})
        writer.flush()
    assert [line["id"] for line in parsed_lines(path)] == [0, 1, 2]
    (failure,) = events.named("before_flush_failed")  # said once, not at every flush
    assert "No space left" in failure["error"]


def whole_and_torn(raw: bytes) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The lines of ``raw`` that are whole JSON objects, and those that are not."""
    whole, torn = [], []
    for line in raw.splitlines():
        try:
            whole.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            torn.append(line)
    return whole, torn


def read_output(path: Path) -> bytes:
    return path.read_bytes()


async def wait_for_output(path: Path, done: Callable[[bytes], bool]) -> bytes:
    """Poll ``path`` until ``done`` with what it holds, then return that."""
    async with asyncio.timeout(10):
        # A file gives no event to await; poll it.
        while not done(raw := read_output(path)):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return raw


async def fill_up_then_make_room(
    proxy: ProxyProcess, client: aiohttp.ClientSession, pid: int, output: Path
) -> None:
    """One record written; the next cut short by a file size limit (``RLIMIT_FSIZE``, what
    a full disk does) in the middle of its line; then room again, and one more record."""
    async with client.get(proxy.url + "/first") as response:
        assert response.status == 200
    await wait_for_output(output, lambda raw: raw.endswith(b"\n"))
    size = len(read_output(output))
    # Half the next line fits: its end and the newline after it do not.
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (size + size // 2, resource.RLIM_INFINITY))
    async with client.get(proxy.url + "/cut") as response:
        assert response.status == 200
    await proxy.wait_event("log_records_lost")
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    async with client.get(proxy.url + "/after") as response:
        assert response.status == 200
    whole, torn = whole_and_torn(await wait_for_output(output, lambda raw: b"/after" in raw))
    # The cut record is one torn line of its own; the one after it is whole.
    assert [line["path"] for line in whole] == ["/first", "/after"]
    assert len(torn) == 1
    assert torn[0].startswith(b'{"ts"')


@pytest.mark.e2e
async def test_a_write_cut_short_by_a_full_disk_costs_only_that_record(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(json_handler(b'{"a": 1}'))
    candidate = await serve(json_handler(b'{"a": 2}'))
    proxy = await start_proxy(primary.url, candidate.url, args=("--workers", "1"))
    await fill_up_then_make_room(proxy, client, proxy.pid, proxy.log_path)
    [lost] = proxy.events("log_records_lost")
    assert lost["records"] == 1
    assert await proxy.stop() == 0
    assert [e["log_records_lost"] for e in proxy.events("stopped")] == [1]


@pytest.mark.e2e
@pytest.mark.timeout(90)
async def test_workers_output_cut_short_by_a_full_disk_costs_only_that_record(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    primary = await serve(json_handler(b'{"a": 1}'))
    candidate = await serve(json_handler(b'{"a": 2}'))
    output = tmp_path / "stdout.jsonl"
    with output.open("wb") as file:
        proxy = await start_proxy(
            primary.url,
            candidate.url,
            args=("--workers", "2"),
            log={"path": "-"},
            stdout=file.fileno(),
        )
    # Only the supervisor writes the output, so only it gets the limit.
    await fill_up_then_make_room(proxy, client, proxy.pid, output)
    [lost] = proxy.events("log_records_lost")
    assert (lost["records"], lost["by"]) == (1, "supervisor")
    assert await proxy.stop() == 0
    stopped = [e for e in proxy.events("stopped") if e.get("role") == "supervisor"]
    assert [e["log_records_lost"] for e in stopped] == [1]


@pytest.mark.e2e
@pytest.mark.timeout(90)
@pytest.mark.parametrize("workers", [1, 2])
async def test_started_with_standard_output_closed_serves_and_counts_the_records(
    serve: Serve, client: aiohttp.ClientSession, tmp_path: Path, workers: int
) -> None:
    primary = await serve(json_handler(b'{"a": 1}'))
    candidate = await serve(json_handler(b'{"a": 2}'))
    config = {
        "listen": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
        "primary": {"url": primary.url},
        "candidate": {"url": candidate.url},
        "log": {"path": "-", "flush_interval": 0.05},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "shadowproxy", "run", "--config", str(config_path)]
    process = await asyncio.create_subprocess_exec(
        "sh", "-c", 'exec "$@" >&-', "sh", *command, "--workers", str(workers),
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    proxy = ProxyProcess(process, config_path, tmp_path / "none")
    try:
        await proxy.wait_started()
        [closed] = proxy.events("log_open_failed")
        assert closed["error"] == "standard output is closed"
        async with client.get(proxy.url + "/x") as response:
            assert response.status == 200
        await proxy.wait_event("log_records_lost")
        assert await proxy.stop() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    final = [e for e in proxy.events("stopped") if "worker" not in e]
    assert [e["log_records_lost"] for e in final] == [1]
