"""Several workers on one port, live reload, and the admin listener of the real process."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from shadowproxy import signals
from shadowproxy.metrics import MAX_ENDPOINT_LABELS, OTHER_ENDPOINT
from tests.conftest import Backend, Handler
from tests.e2e.conftest import ProxyProcess, StartProxy

pytestmark = pytest.mark.e2e

RELOAD_STORM_INTERVAL = 0.05
RECORD_POLL = 0.05

Serve = Callable[..., Awaitable[Backend]]


def json_handler(document: object) -> Handler:
    async def handler(_: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=orjson.dumps(document), content_type="application/json")

    return handler


async def metric(admin_url: str, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(admin_url + "/metrics") as r:
        text = await r.text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def get_on_new_connections(url: str, paths: list[str], at_once: int = 40) -> None:
    """GET each path, ``at_once`` at a time, each on a new connection: the kernel spreads new
    connections over the workers, so every worker gets some."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def get(path: str) -> None:
            async with client.get(url + path) as response:
                assert response.status == 200
                await response.read()

        for start in range(0, len(paths), at_once):
            await asyncio.gather(*(get(path) for path in paths[start : start + at_once]))


async def admin_get(proxy: ProxyProcess, path: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(proxy.admin_url + path) as r:
        return r.status, await r.read()


async def answering_alike(
    serve: Serve, start_proxy: StartProxy, workers: int, **options: Any
) -> ProxyProcess:
    """A proxy whose primary and candidate answer alike; it reloads on SIGHUP only."""
    primary = await serve(json_handler({"a": 1}))
    candidate = await serve(json_handler({"a": 1}))
    return await start_proxy(
        primary.url,
        candidate.url,
        args=("--workers", str(workers)),
        reload={"watch": False},
        **options,
    )


@pytest.mark.timeout(120)
async def test_two_workers_share_the_port_the_log_and_the_metrics(
    serve: Serve, start_proxy: StartProxy
) -> None:
    primary = await serve(json_handler({"items": list(range(50)), "v": 1}))
    candidate = await serve(json_handler({"items": list(range(50)), "v": 2}))
    proxy = await start_proxy(primary.url, candidate.url, args=("--workers", "2"))
    assert proxy.count("worker_listening") == 2  # each said before the supervisor's 'listening'
    total = 400
    await get_on_new_connections(proxy.url, [f"/things/{i}" for i in range(total)])
    records = await proxy.wait_records(total)
    assert len(records) == total  # every line whole and parseable (lines() would raise)
    assert {r["outcome"] for r in records} == {"mismatch"}
    served_by = {r["id"] for r in records}
    assert len(served_by) == total
    compared = await metric(proxy.admin_url, "shadowproxy_comparisons_total", outcome="mismatch")
    assert compared == total
    pids = {e["pid"] for e in proxy.events("worker_listening")}
    assert len(pids) == 2
    assert await proxy.stop() == 0


async def test_sighup_reload_applies_new_config_and_invalid_file_keeps_old(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(json_handler({"a": 1}))
    candidate = await serve(json_handler({"a": 1}))
    proxy = await start_proxy(
        primary.url, candidate.url, args=("--workers", "1"), reload={"watch": False}
    )
    async with client.get(proxy.url + "/one"):
        pass
    await proxy.wait_records(1)

    config = yaml.safe_load(proxy.config_path.read_text())
    config["mirror"] = {"sample_rate": 0.0}
    proxy.config_path.write_text(yaml.safe_dump(config))
    proxy.process.send_signal(signal.SIGHUP)
    reloaded = await proxy.wait_event("config_reloaded")
    for _ in range(5):
        async with client.get(proxy.url + "/two") as response:
            assert response.status == 200
    _, body = await admin_get(proxy, "/config")
    assert orjson.loads(body)["digest"] == reloaded["digest"]

    config["mirror"] = {"sample_rate": 3}
    proxy.config_path.write_text(yaml.safe_dump(config))
    proxy.process.send_signal(signal.SIGHUP)
    failed = await proxy.wait_event("config_reload_failed")
    assert "mirror.sample_rate: must be between 0 and 1" in failed["error"]
    _, body = await admin_get(proxy, "/config")
    assert orjson.loads(body)["digest"] == reloaded["digest"]  # the old one is still in force
    async with client.get(proxy.url + "/three") as response:
        assert response.status == 200
    assert await proxy.stop() == 0
    lines = proxy.lines()
    assert len([r for r in lines if r.get("event") == "exchange"]) == 1
    assert [r["digest"] for r in lines if r.get("event") == "config_reloaded"] == [
        reloaded["digest"]
    ]


async def test_config_file_change_is_picked_up_without_a_signal(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(json_handler({"a": 1}))
    candidate = await serve(json_handler({"a": 1}))
    proxy = await start_proxy(
        primary.url, candidate.url, args=("--workers", "2"), reload={"poll_interval": 0.1}
    )
    config = yaml.safe_load(proxy.config_path.read_text())
    config["mirror"] = {"sample_rate": 0.0}
    # Write elsewhere and rename over, as editors and ConfigMap updates do.
    staged = proxy.config_path.with_suffix(".new")
    staged.write_text(yaml.safe_dump(config))
    staged.replace(proxy.config_path)
    await proxy.wait_event("config_reloaded")
    for _ in range(20):
        async with client.get(proxy.url + "/after") as response:
            assert response.status == 200
    assert await proxy.stop() == 0
    assert proxy.records() == []


async def test_admin_endpoints(serve: Serve, start_proxy: StartProxy) -> None:
    primary = await serve(json_handler({"a": 1}))
    candidate = await serve(json_handler({"a": 2}))
    proxy = await start_proxy(
        primary.url.replace("http://", "http://user:pw@"),
        candidate.url,
        args=("--workers", "1"),
    )
    async with aiohttp.ClientSession() as client:
        for _ in range(3):
            async with client.get(proxy.url + "/users/1") as response:
                await response.read()
    await proxy.wait_records(3)
    status, body = await admin_get(proxy, "/readyz")
    assert status == 200
    status, body = await admin_get(proxy, "/config")
    assert status == 200
    assert b"pw" not in body
    status, body = await admin_get(proxy, "/report.json")
    assert status == 200
    assert b"GET /users/{id}" in body
    status, body = await admin_get(proxy, "/report")
    assert status == 200
    assert b"<html" in body.lower()
    assert await metric(proxy.admin_url, "shadowproxy_mirrored_total") == 3


@pytest.mark.timeout(120)
async def test_reloads_under_steady_load_fail_no_request(
    serve: Serve, start_proxy: StartProxy
) -> None:
    proxy = await answering_alike(serve, start_proxy, 2)
    config = yaml.safe_load(proxy.config_path.read_text())
    failures: list[str] = []
    done = asyncio.Event()
    progress = asyncio.Condition()
    served = 0

    async def load(client: aiohttp.ClientSession) -> None:
        nonlocal served
        while not done.is_set():
            try:
                async with client.get(proxy.url + "/steady") as response:
                    if response.status != 200 or await response.read() != b'{"a":1}':
                        failures.append(f"status {response.status}")
            except aiohttp.ClientError as error:
                failures.append(repr(error))
            served += 1
            async with progress:
                progress.notify_all()

    async with aiohttp.ClientSession() as client:
        loaders = [asyncio.ensure_future(load(client)) for _ in range(8)]
        for rate in (0.1, 0.5, 1.0, 0.25, 0.0, 1.0):
            config["mirror"] = {"sample_rate": rate}
            proxy.config_path.write_text(yaml.safe_dump(config))
            before = proxy.count("config_reloaded")
            proxy.process.send_signal(signal.SIGHUP)
            # Two workers and the supervisor each say they reloaded.
            await proxy.wait_count("config_reloaded", before + 3)
            mark = served
            async with asyncio.timeout(10), progress:  # traffic flows under the new config
                await progress.wait_for(lambda mark=mark: served >= mark + 20)
        done.set()
        await asyncio.gather(*loaders)
    assert await proxy.stop() == 0
    assert failures == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [1, 2])
async def test_a_reload_asked_for_during_start_up_is_done_once_started(
    serve: Serve, start_proxy: StartProxy, workers: int
) -> None:
    # Held here, SIGHUP stays pending in the child from its first instruction, as it does
    # in a worker its supervisor starts; the process must take it once it can reload.
    def hang_up(process: asyncio.subprocess.Process) -> None:
        process.send_signal(signal.SIGHUP)

    signals.hold(signal.SIGHUP)
    try:
        proxy = await answering_alike(serve, start_proxy, workers, on_spawn=hang_up)
    finally:
        signals.release(signal.SIGHUP)
    # Each worker, and a supervisor when there is one, says it reloaded.
    await proxy.wait_count("config_reloaded", workers + 1 if workers > 1 else 1)
    assert proxy.count("worker_exited") == 0
    async with aiohttp.ClientSession() as client, client.get(proxy.url + "/x") as response:
        assert response.status == 200
    assert await proxy.stop() == 0


@pytest.mark.timeout(60)
async def test_a_worker_started_again_survives_reloads_asked_for_while_it_starts(
    serve: Serve, start_proxy: StartProxy
) -> None:
    proxy = await answering_alike(serve, start_proxy, 2)
    victim = proxy.events("worker_listening")[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    await proxy.wait_event("worker_exited")

    async def ask_for_reloads() -> None:
        # A storm, so that some fall while the new worker imports its modules and starts.
        while True:
            proxy.process.send_signal(signal.SIGHUP)
            await asyncio.sleep(RELOAD_STORM_INTERVAL)

    storm = asyncio.ensure_future(ask_for_reloads())
    try:
        await proxy.wait_count("worker_listening", 3, timeout=20)
    finally:
        storm.cancel()
    lines = proxy.stderr_lines
    replacement = proxy.events("worker_listening")[-1]
    assert replacement["pid"] != victim
    died = max(i for i, e in enumerate(lines) if e.get("event") == "worker_exited")

    def reloaded_since_started() -> bool:
        # Before or after it says it listens: it applies what came while it started at once.
        return any(
            e.get("event") == "config_reloaded" and e.get("worker") == replacement["worker"]
            for e in lines[died:]
        )

    # A signal pending at its start is a reload once it is ready, not its death.
    await proxy.wait_until(reloaded_since_started)
    assert proxy.count("worker_exited") == 1
    assert await proxy.stop() == 0


@pytest.mark.timeout(60)
async def test_a_worker_started_again_runs_the_config_its_siblings_run(
    serve: Serve, start_proxy: StartProxy
) -> None:
    proxy = await answering_alike(serve, start_proxy, 2)
    first = proxy.events("worker_listening")
    proxy.config_path.write_text("mirror: {sample_rate: [\n")  # an edit that does not load
    proxy.process.send_signal(signal.SIGHUP)
    await proxy.wait_event("config_reload_failed")
    os.kill(first[0]["pid"], signal.SIGKILL)
    await proxy.wait_count("worker_listening", 3, timeout=20)
    replacement = proxy.events("worker_listening")[-1]
    assert replacement["config_digest"] == first[0]["config_digest"]
    assert proxy.count("worker_exited") == 1
    async with aiohttp.ClientSession() as client, client.get(proxy.url + "/a") as response:
        assert response.status == 200
    assert await proxy.stop() == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [1, 2])
async def test_sighup_reopens_the_log_even_when_the_config_does_not_load(
    serve: Serve, start_proxy: StartProxy, workers: int
) -> None:
    primary = await serve(json_handler({"a": 1}))
    candidate = await serve(json_handler({"a": 2}))
    proxy = await start_proxy(
        primary.url, candidate.url, args=("--workers", str(workers)), reload={"watch": False}
    )
    connector = aiohttp.TCPConnector(force_close=True)  # new connections reach every worker
    async with aiohttp.ClientSession(connector=connector) as client:
        async with client.get(proxy.url + "/before") as response:
            assert response.status == 200
        await proxy.wait_records(1)
        rotated = proxy.log_path.with_name(proxy.log_path.name + ".1")
        proxy.log_path.rename(rotated)  # logrotate moves the file, then signals
        proxy.config_path.write_text("mirror: {sample_rate: [\n")  # and the config is broken
        proxy.process.send_signal(signal.SIGHUP)
        # Every process that writes the log reopens it; the one that reads the file keeps
        # its config and says so.
        await proxy.wait_count("log_reopened", workers)
        await proxy.wait_count("config_reload_failed", 1)
        for i in range(10):
            async with client.get(f"{proxy.url}/after/{i}") as response:
                assert response.status == 200
    await proxy.wait_records(10)  # in the file opened again under the log's name
    moved = [line for line in rotated.read_bytes().splitlines() if b'"exchange"' in line]
    assert len(moved) == 1
    assert await proxy.stop() == 0


@pytest.mark.timeout(60)
async def test_a_config_larger_than_a_pipe_holds_reaches_a_restarted_worker(
    serve: Serve, start_proxy: StartProxy
) -> None:
    proxy = await answering_alike(serve, start_proxy, 2)
    comment = "".join(f"# {'x' * 100}\n" for _ in range(2000))  # 200 KB; a pipe holds 64
    proxy.config_path.write_text(proxy.config_path.read_text() + comment)
    proxy.process.send_signal(signal.SIGHUP)
    await proxy.wait_count("config_reloaded", 3)
    victim = proxy.events("worker_listening")[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    await proxy.wait_count("worker_listening", 3, timeout=20)
    assert proxy.count("worker_exited") == 1
    assert await proxy.stop() == 0


@pytest.mark.timeout(60)
async def test_a_reload_applies_the_logs_rotation_settings(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(json_handler({"a": 1}))
    candidate = await serve(json_handler({"a": 2}))
    proxy = await start_proxy(
        primary.url, candidate.url, args=("--workers", "1"), reload={"watch": False}
    )
    config = yaml.safe_load(proxy.config_path.read_text())
    config["log"].update(max_bytes="1KiB", backups=1)  # unset at start: never rotated
    proxy.config_path.write_text(yaml.safe_dump(config))
    proxy.process.send_signal(signal.SIGHUP)
    await proxy.wait_event("config_reloaded")
    rotated = proxy.log_path.with_name(proxy.log_path.name + ".1")
    async with client.get(proxy.url + "/first") as response:
        assert response.status == 200
    await proxy.wait_records(1)
    # The next batch would take the file past 1 KiB: it is rotated first.
    async with client.get(proxy.url + "/second") as response:
        assert response.status == 200
    async with asyncio.timeout(10):
        while not rotated.exists():  # noqa: ASYNC110 - a file gives no event to await
            await asyncio.sleep(0.05)
    assert proxy.log_path.stat().st_size <= 1024
    assert await proxy.stop() == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [1, 2])
async def test_a_reload_applies_the_logs_flush_interval_at_once(
    serve: Serve, start_proxy: StartProxy, workers: int
) -> None:
    # A writer still sleeping out the old interval would hold records for a minute.
    proxy = await answering_alike(serve, start_proxy, workers, log={"flush_interval": 60})
    config = yaml.safe_load(proxy.config_path.read_text())
    config["log"]["flush_interval"] = 0.05
    proxy.config_path.write_text(yaml.safe_dump(config))
    proxy.process.send_signal(signal.SIGHUP)
    await proxy.wait_count("config_reloaded", workers + (workers > 1))
    total = 20
    await get_on_new_connections(proxy.url, [f"/after/{i}" for i in range(total)])
    assert len(await proxy.wait_records(total, timeout=10)) == total
    assert await proxy.stop() == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [1, 2])
async def test_a_reload_applies_log_redaction_to_the_capture_too(
    serve: Serve, start_proxy: StartProxy, tmp_path: Path, workers: int
) -> None:
    primary = await serve(json_handler({"password": "hunter2", "a": 1}))
    candidate = await serve(json_handler({"password": "hunter2", "a": 1}))
    capture = tmp_path / "capture.jsonl"
    proxy = await start_proxy(
        primary.url,
        candidate.url,
        args=("--workers", str(workers)),
        reload={"watch": False},
        capture={"path": str(capture), "flush_interval": 0.05},
    )
    config = yaml.safe_load(proxy.config_path.read_text())
    config["log"].update(redact=["/password"], redact_query=["session"])
    proxy.config_path.write_text(yaml.safe_dump(config))
    proxy.process.send_signal(signal.SIGHUP)
    await proxy.wait_count("config_reloaded", workers + (workers > 1))
    assert proxy.count("config_reload_partial") == 0  # nothing waits for a restart
    total = 20
    await get_on_new_connections(proxy.url, [f"/me?session=s3cret{i}" for i in range(total)])
    assert await proxy.stop() == 0  # the capture is written out
    files = [capture] if workers == 1 else [tmp_path / f"capture.w{i}.jsonl" for i in (0, 1)]
    written = b"".join(file.read_bytes() for file in files if file.exists())
    assert written.count(b"\n") == total
    assert b"hunter2" not in written
    assert b"s3cret" not in written


@pytest.mark.timeout(60)
async def test_a_mirror_under_way_keeps_the_body_bound_it_started_with(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    # The primary's body was captured under the old diff.max_body_bytes: judging the
    # candidate's by the new one made a candidate error out of two equal answers.
    document = {"items": ["x" * 100 for _ in range(40)]}  # about 4 KiB
    answer = json_handler(document)
    release = asyncio.Event()

    async def held(request: web.BaseRequest) -> web.StreamResponse:
        await release.wait()
        return await answer(request)

    primary = await serve(answer)
    candidate = await serve(held)
    proxy = await start_proxy(
        primary.url, candidate.url, args=("--workers", "1"), reload={"watch": False}
    )
    async with client.get(proxy.url + "/big") as response:
        assert response.status == 200
    await candidate.arrived.wait()
    config = yaml.safe_load(proxy.config_path.read_text())
    config["diff"] = {"max_body_bytes": "1KiB"}
    proxy.config_path.write_text(yaml.safe_dump(config))
    proxy.process.send_signal(signal.SIGHUP)
    await proxy.wait_event("config_reloaded")
    release.set()
    [record] = await proxy.wait_records(1)
    assert record["outcome"] == "match"
    assert await proxy.stop() == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [1, 2])
async def test_a_reload_names_the_keys_that_wait_for_a_restart(
    serve: Serve, start_proxy: StartProxy, workers: int
) -> None:
    proxy = await answering_alike(serve, start_proxy, workers)
    _, body = await admin_get(proxy, "/config")
    before = orjson.loads(body)["config"]
    config = yaml.safe_load(proxy.config_path.read_text())
    config["admin"] = "10.0.0.1:9901"  # not loopback: /config would need a token there
    config["shutdown_timeout"] = 3
    config["reload"]["poll_interval"] = 7
    config["mirror"] = {"sample_rate": 0.5}  # applied at once
    proxy.config_path.write_text(yaml.safe_dump(config))
    proxy.process.send_signal(signal.SIGHUP)
    partial = await proxy.wait_event("config_reload_partial")
    assert partial["keys"] == ["admin", "shutdown_timeout", "reload"]
    await proxy.wait_count("config_reloaded", workers + (workers > 1))
    # What is served and authorised is what runs: the loopback listener it started with.
    status, body = await admin_get(proxy, "/config")
    assert status == 200
    served = orjson.loads(body)["config"]
    assert served["mirror"]["sample_rate"] == 0.5
    for key in ("admin", "shutdown_timeout", "reload"):
        assert served[key] == before[key]
    assert await proxy.stop() == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [1, 2])
async def test_comparison_rules_that_do_not_compile_are_refused_whole(
    serve: Serve, start_proxy: StartProxy, workers: int
) -> None:
    proxy = await answering_alike(serve, start_proxy, workers)
    _, before = await admin_get(proxy, "/config")
    config = yaml.safe_load(proxy.config_path.read_text())
    config["diff"] = {"endpoints": [{"match": "users", "ignore": ["/a"]}]}
    proxy.config_path.write_text(yaml.safe_dump(config))
    proxy.process.send_signal(signal.SIGHUP)
    failed = await proxy.wait_event("config_reload_failed")
    assert 'diff.endpoints[0].match: endpoint pattern "users"' in failed["error"]
    _, after = await admin_get(proxy, "/config")
    assert after == before
    assert proxy.count("config_reloaded") == 0
    assert await proxy.stop() == 0


def sighup_blocked_by_thread(pid: int) -> dict[int, bool]:
    """For each thread of ``pid``, from /proc: whether it blocks SIGHUP."""
    blocked = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        status = (task / "status").read_text().splitlines()
        mask = next(line.split()[1] for line in status if line.startswith("SigBlk"))
        blocked[int(task.name)] = bool(int(mask, 16) & (1 << (signal.SIGHUP - 1)))
    return blocked


@pytest.mark.timeout(60)
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
async def test_only_the_main_thread_takes_sighup(serve: Serve, start_proxy: StartProxy) -> None:
    # A thread that does not block SIGHUP may take one sent during start-up, before the main
    # thread's handler can act on it; every thread is started with it held.
    proxy = await answering_alike(serve, start_proxy, 1)
    blocked = sighup_blocked_by_thread(proxy.pid)
    assert blocked.pop(proxy.pid) is False  # released once it listens
    assert blocked  # the operational log's writer (standard error is a pipe here), executors
    assert all(blocked.values())
    assert await proxy.stop() == 0


@pytest.mark.timeout(60)
async def test_workers_take_their_config_from_the_supervisor_only(
    serve: Serve, start_proxy: StartProxy
) -> None:
    proxy = await answering_alike(serve, start_proxy, 2)
    first, second = proxy.events("worker_listening")
    config = yaml.safe_load(proxy.config_path.read_text())
    config["mirror"] = {"sample_rate": 0.5}
    proxy.config_path.write_text(yaml.safe_dump(config))

    # A worker's own SIGHUP reopens its log and reads nothing: it cannot run a file its
    # siblings never saw.
    os.kill(first["pid"], signal.SIGHUP)
    await proxy.wait_until(
        lambda: any(e.get("worker") == first["worker"] for e in proxy.events("log_reopened"))
    )
    assert proxy.count("config_reloaded") == 0

    proxy.process.send_signal(signal.SIGHUP)
    await proxy.wait_count("config_reloaded", 3)  # the supervisor and both workers
    digests = {e["digest"] for e in proxy.events("config_reloaded")}
    assert len(digests) == 1
    assert digests != {first["config_digest"]} == {second["config_digest"]}
    assert await proxy.stop() == 0


@pytest.mark.timeout(90)
async def test_workers_logging_to_standard_output_pass_whole_lines_and_feed_the_live_report(
    serve: Serve, start_proxy: StartProxy
) -> None:
    # Records of about 20 KB: far beyond what a pipe takes in one piece.
    primary = await serve(json_handler({"rows": [f"p{i}-" + "x" * 400 for i in range(50)]}))
    candidate = await serve(json_handler({"rows": [f"c{i}-" + "x" * 400 for i in range(50)]}))
    read_end, write_end = os.pipe()
    proxy = await start_proxy(
        primary.url, candidate.url, args=("--workers", "2"), log={"path": "-"}, stdout=write_end
    )
    os.close(write_end)
    lines = asyncio.StreamReader(limit=1 << 20)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(lines), os.fdopen(read_end, "rb")
    )
    total = 60
    await get_on_new_connections(proxy.url, [f"/rows/{i}" for i in range(total)])
    records = [orjson.loads(await lines.readline()) for _ in range(total)]  # whole lines
    assert {r["event"] for r in records} == {"exchange"}
    assert len({r["id"] for r in records}) == total
    assert all(r["difference_count"] == 50 for r in records)

    # Each line the supervisor passed on is in the live report already.
    status, body = await admin_get(proxy, "/report.json")
    assert status == 200
    assert orjson.loads(body)["overall"]["compared"] == total
    assert await proxy.stop() == 0
    assert await lines.read() == b""  # nothing after the records, not even a torn line
    transport.close()
    stopped = [e for e in proxy.events("stopped") if e.get("role") == "supervisor"]
    assert [e["log_records_lost"] for e in stopped] == [0]


@pytest.mark.timeout(90)
async def test_workers_that_cannot_start_again_are_retried_ever_less_often(
    serve: Serve, start_proxy: StartProxy, tmp_path: Path
) -> None:
    captures = tmp_path / "captures"
    captures.mkdir()
    proxy = await answering_alike(
        serve, start_proxy, 2, capture={"path": str(captures / "capture.jsonl")}
    )
    assert (await admin_get(proxy, "/readyz"))[0] == 200
    captures.rename(tmp_path / "gone")
    captures.write_text("")  # a file where its directory was: a new worker cannot capture
    for worker in proxy.events("worker_listening"):
        os.kill(worker["pid"], signal.SIGKILL)

    def exits_of(index: int) -> list[float]:
        return [e["restart_in"] for e in proxy.events("worker_exited") if e["worker"] == index]

    # Killed, then two failed starts each: ever longer waits.
    await proxy.wait_until(lambda: len(exits_of(0)) >= 3 and len(exits_of(1)) >= 3, timeout=30)
    assert exits_of(0)[:3] == exits_of(1)[:3] == [1.0, 2.0, 4.0]
    assert "exited during start-up" in proxy.events("worker_start_failed")[0]["error"]
    status, body = await admin_get(proxy, "/readyz")
    assert (status, orjson.loads(body)["reason"]) == (503, "no worker is serving")
    assert await metric(proxy.admin_url, "shadowproxy_workers_serving") == 0
    assert await metric(proxy.admin_url, "shadowproxy_worker_exits_total") >= 6

    captures.unlink()
    (tmp_path / "gone").rename(captures)  # mended: the next tries start them
    await proxy.wait_count("worker_restarted", 2, timeout=30)
    assert (await admin_get(proxy, "/readyz"))[0] == 200
    assert await metric(proxy.admin_url, "shadowproxy_workers_serving") == 2
    async with aiohttp.ClientSession() as client, client.get(proxy.url + "/a") as response:
        assert response.status == 200
    assert await proxy.stop() == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [1, 2])
async def test_credentials_in_backend_urls_stay_out_of_the_operational_log(
    serve: Serve, start_proxy: StartProxy, workers: int
) -> None:
    primary = await serve(json_handler({"a": 1}))
    candidate = await serve(json_handler({"a": 2}))
    with_user = [
        u.replace("http://", f"http://ops:{s}@")
        for u, s in ((primary.url, "p-pw"), (candidate.url, "c-pw"))
    ]
    proxy = await start_proxy(
        *with_user,
        args=("--workers", str(workers)),
        mirror={"breaker": {"failures": 1, "pause": 30}},
    )
    await proxy.stop()
    text = "\n".join(map(str, proxy.stderr_lines))
    assert "[redacted]@" in text
    assert "p-pw" not in text
    assert "c-pw" not in text


@pytest.mark.timeout(90)
async def test_with_workers_reloads_are_counted_once_and_a_restart_is_no_reload(
    serve: Serve, start_proxy: StartProxy
) -> None:
    proxy = await answering_alike(serve, start_proxy, 2)
    config = yaml.safe_load(proxy.config_path.read_text())
    config["mirror"] = {"sample_rate": 0.5}
    proxy.config_path.write_text(yaml.safe_dump(config))
    proxy.process.send_signal(signal.SIGHUP)
    await proxy.wait_count("config_reloaded", 3)  # the supervisor and both workers
    proxy.config_path.write_text("mirror: {sample_rate: [\n")
    proxy.process.send_signal(signal.SIGHUP)
    await proxy.wait_event("config_reload_failed")
    reloads = "shadowproxy_config_reloads_total"
    assert await metric(proxy.admin_url, reloads, result="ok") == 1
    assert await metric(proxy.admin_url, reloads, result="invalid") == 1

    first = proxy.events("worker_listening")[0]
    os.kill(first["pid"], signal.SIGKILL)
    await proxy.wait_event("worker_restarted", timeout=20)
    await proxy.wait_until(
        lambda: any(e.get("worker") == first["worker"] for e in proxy.events("config_caught_up"))
    )
    assert proxy.count("config_reloaded") == 3
    assert await metric(proxy.admin_url, reloads, result="ok") == 1
    assert await proxy.stop() == 0
    logged = [r for r in proxy.lines() if r.get("event") == "config_reloaded"]
    assert len(logged) == 2  # one record per worker, for the one reload


@pytest.mark.timeout(90)
async def test_a_dead_workers_mirrors_in_flight_leave_the_gauge(
    serve: Serve, start_proxy: StartProxy
) -> None:
    release = asyncio.Event()

    async def stalled(_: web.BaseRequest) -> web.StreamResponse:
        await release.wait()
        return web.Response(text="late")

    primary = await serve(json_handler({"a": 1}))
    candidate = await serve(stalled)
    proxy = await start_proxy(
        primary.url, candidate.url, args=("--workers", "2"), candidate={"timeout": 60}
    )
    try:
        await get_on_new_connections(proxy.url, [f"/r{i}" for i in range(40)])
        in_flight = "shadowproxy_mirrors_in_flight"
        async with asyncio.timeout(10):
            # Published at each flush of the log: a scrape is the only way to see it.
            while await metric(proxy.admin_url, in_flight) < 40:  # noqa: ASYNC110
                await asyncio.sleep(RECORD_POLL)
        for worker in proxy.events("worker_listening"):
            os.kill(worker["pid"], signal.SIGKILL)
        await proxy.wait_count("worker_restarted", 2, timeout=20)
        assert await metric(proxy.admin_url, in_flight) == 0
    finally:
        release.set()
    assert await proxy.stop() == 0


@pytest.mark.timeout(60)
async def test_one_busy_worker_gets_nearly_all_of_max_rps(
    serve: Serve, start_proxy: StartProxy
) -> None:
    """All traffic on one keep-alive connection reaches one worker; an even split of the rate
    would let it mirror half of ``max_rps``."""
    primary = await serve(json_handler({"a": 1}))
    candidate = await serve(json_handler({"a": 2}))
    rate, seconds = 20.0, 4.0
    proxy = await start_proxy(
        primary.url, candidate.url, args=("--workers", "2"), mirror={"max_rps": rate}
    )
    sent = 0
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        while loop.time() - started < seconds:
            async with client.get(proxy.url + f"/r/{sent}") as response:
                assert response.status == 200
                await response.read()
            sent += 1
        elapsed = loop.time() - started
    assert sent > 2 * rate * elapsed  # asked for far more than the cap

    async def settled() -> tuple[int, float]:
        skipped = await metric(proxy.admin_url, "shadowproxy_mirror_skipped_total")
        return len(proxy.records()), skipped

    async with asyncio.timeout(15):
        # Records and metrics are files and a page: nothing to await but their contents.
        while sum(counts := await settled()) < sent:  # noqa: ASYNC110
            await asyncio.sleep(RECORD_POLL)
    mirrored, skipped = counts
    assert (
        await metric(proxy.admin_url, "shadowproxy_mirror_skipped_total", reason="rate_limit")
        == skipped
    )
    half = rate / 2
    # More than one worker's even split could allow (its burst, then half the rate)...
    assert mirrored > half + half * elapsed + 10, (mirrored, elapsed)
    # ...and never more than the whole cap.
    assert mirrored <= rate + rate * elapsed + 1, (mirrored, elapsed)
    assert await proxy.stop() == 0


async def endpoint_labels(admin_url: str) -> tuple[set[str], float]:
    """The endpoint labels of the comparisons on /metrics, and the comparisons counted."""
    async with aiohttp.ClientSession() as session, session.get(admin_url + "/metrics") as r:
        text = await r.text()
    labels, compared = set(), 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "shadowproxy_comparisons_total":
                labels.add(sample.labels["endpoint"])
                compared += sample.value
    return labels, compared


@pytest.mark.timeout(120)
async def test_workers_share_the_cap_on_endpoint_labels_even_when_started_again(
    serve: Serve, start_proxy: StartProxy
) -> None:
    # Each worker choosing its own endpoints would show up to twice the cap, and a worker
    # started again would add its own on top.
    proxy = await answering_alike(serve, start_proxy, 2)
    first = MAX_ENDPOINT_LABELS * 3 // 2
    await get_on_new_connections(proxy.url, [f"/e{i}x/items" for i in range(first)])
    await proxy.wait_records(first)

    async def compared_at_least(total: int) -> set[str]:
        async with asyncio.timeout(10):
            # Published at each flush of the log: a scrape is the only way to see it.
            while (found := await endpoint_labels(proxy.admin_url))[1] < total:  # noqa: ASYNC110
                await asyncio.sleep(RECORD_POLL)
        assert found[1] == total
        return found[0]

    labels = await compared_at_least(first)
    assert len(labels - {OTHER_ENDPOINT}) == MAX_ENDPOINT_LABELS
    assert OTHER_ENDPOINT in labels

    worker = proxy.events("worker_listening")[0]
    os.kill(worker["pid"], signal.SIGKILL)
    await proxy.wait_event("worker_restarted", timeout=20)
    more = MAX_ENDPOINT_LABELS // 2
    await get_on_new_connections(proxy.url, [f"/f{i}x/items" for i in range(more)])
    await proxy.wait_records(first + more)
    labels = await compared_at_least(first + more)  # nothing was left unpublished at the kill
    assert len(labels - {OTHER_ENDPOINT}) == MAX_ENDPOINT_LABELS
    assert await proxy.stop() == 0
