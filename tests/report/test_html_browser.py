"""The HTML report in headless Chromium, driven over the DevTools protocol (aiohttp websocket).

Skipped when Chromium is not installed, except under CI (``CI`` set), where it must run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from shadowproxy.report.aggregate import Aggregator
from shadowproxy.report.cli import main
from shadowproxy.report.html import render_html
from shadowproxy.report.summary import summarise
from shadowproxy.report.synthetic import difference, exchange_record, generate

pytestmark = pytest.mark.browser

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
START_TIMEOUT = 30.0
WAIT_TIMEOUT = 15.0
ATTACK = "</script><script>window.pwned=1</script><img src=x onerror=window.pwned=2>"
MAX_CHART_ENDPOINTS = 40


def chromium_binary() -> str | None:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture
def chromium() -> str:
    binary = chromium_binary()
    if binary is None:
        message = "headless Chromium is not installed (Debian: chromium; `make sysdeps` as root)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must run the browser tests")
        pytest.skip(message)
    return binary


class Page:
    """One tab: send commands, collect severe console messages, evaluate JavaScript."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.errors: list[str] = []
        self.loaded = asyncio.Event()
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = orjson.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            else:
                self._event(data["method"], data.get("params", {}))

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.errors.append(" ".join(str(a.get("value", a)) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description", details["text"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(params["entry"]["text"])
        elif method == "Page.loadEventFired":
            self.loaded.set()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        payload = {"id": self._next_id, "method": method, "params": params}
        await self.ws.send_str(orjson.dumps(payload).decode())
        reply = await asyncio.wait_for(future, WAIT_TIMEOUT)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply["result"]
        return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def open(self, url: str) -> None:
        self.loaded.clear()
        await self.send("Page.navigate", url=url)
        await asyncio.wait_for(self.loaded.wait(), WAIT_TIMEOUT)
        await self.wait_for("document.body.dataset.rendered === 'true'")

    async def wait_for(self, expression: str) -> None:
        """Poll until ``expression`` is true; errors count as false, as during a reload."""
        deadline = time.monotonic() + WAIT_TIMEOUT
        while True:
            with contextlib.suppress(AssertionError, RuntimeError):
                if await self.evaluate(f"Boolean({expression})"):
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression}; errors: {self.errors}")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def browser_page(binary: str, tmp_path: Path) -> AsyncIterator[Page]:
    profile = tmp_path / "profile"
    log = (tmp_path / "chromium.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        "--window-size=1280,1000",
        "about:blank",
        stdout=log,
        stderr=log,
    )
    try:
        port = await _devtools_port(profile, process)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
            target = next(t for t in targets if t["type"] == "page")
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                for domain in ("Runtime", "Log", "Page"):
                    await page.send(f"{domain}.enable")
                try:
                    yield page
                finally:
                    await page.close()
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


async def _devtools_port(profile: Path, process: asyncio.subprocess.Process) -> int:
    # Chromium writes the port it chose to this file once DevTools listens.
    active = profile / "DevToolsActivePort"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise AssertionError(f"chromium exited with {process.returncode}")
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            return int(active.read_text().splitlines()[0])
        await asyncio.sleep(0.05)
    raise AssertionError("chromium did not open its DevTools port")


def report_log(write: Callable[[Path], None], tmp_path: Path) -> Path:
    path = tmp_path / "exchanges.jsonl"
    write(path)
    return path


def hostile_records() -> list[dict[str, Any]]:
    return [
        exchange_record(
            endpoint=f"GET /x{ATTACK}",
            path=f"/x{ATTACK}",
            outcome="mismatch",
            differences=[difference(f"/{ATTACK}", ATTACK, {"k": ATTACK})],
            difference_count=3,
        ),
        exchange_record(
            endpoint="GET /text",
            outcome="mismatch",
            differences=[difference("", "a", "b")],
        )
        | {"body_kind": "text", "excerpt": "--- primary\n+++ candidate\n-old line\n+new line"},
    ]


@pytest.fixture
def report_file(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A report written by the CLI from a generated log plus hostile records, and its JSON."""
    log = tmp_path / "exchanges.jsonl"
    with log.open("wb") as out:
        for record in [*generate(6000, seed=21), *hostile_records()]:
            out.write(orjson.dumps(record) + b"\n")
    html = tmp_path / "report.html"
    assert main(["report", str(log), "--html", str(html), "--json"]) == 0
    data = orjson.loads(
        html.read_text().split('type="application/json">', 1)[1].split("</script>")[0]
    )
    return html, data


async def test_report_renders_charts_without_errors(
    chromium: str, tmp_path: Path, report_file: tuple[Path, dict[str, Any]]
) -> None:
    html, data = report_file
    async with browser_page(chromium, tmp_path) as page:
        await page.open(html.as_uri())
        shown = await page.evaluate(
            """(() => {
              const size = (sel) => {
                const e = document.querySelector(sel);
                if (!e) return null;
                const r = e.getBoundingClientRect();
                return [r.width, r.height];
              };
              const widths = (sel) => [...document.querySelectorAll(sel)]
                .map((e) => e.getBoundingClientRect().width);
              return {
                matchRate: size("#chart-match-rate"),
                latency: size("#chart-latency"),
                timeseries: size("#chart-timeseries"),
                matchBars: widths("#chart-match-rate rect.bar"),
                latencySeries: document.querySelectorAll("#chart-latency polyline.series").length,
                timeBars: document.querySelectorAll("#chart-timeseries rect.bar-mismatch").length,
                endpoints: document.querySelectorAll("details.endpoint").length,
                scripts: document.scripts.length,
                images: document.images.length,
                pwned: window.pwned === undefined ? null : window.pwned,
                heading: document.querySelector("h1").textContent,
              };
            })()"""
        )
        for chart in ("matchRate", "latency", "timeseries"):
            width, height = shown[chart]
            assert width > 100, (chart, shown[chart])
            assert height > 50, (chart, shown[chart])
        charted = data["endpoints"][:MAX_CHART_ENDPOINTS]
        expected_bars = sum(
            bool(r[key]) for r in charted for key in ("matches", "mismatches", "candidate_errors")
        )
        assert len(shown["matchBars"]) == expected_bars
        assert min(shown["matchBars"]) > 0
        assert shown["latencySeries"] == 2
        assert shown["timeBars"] == len(data["timeseries"]["buckets"])
        assert shown["endpoints"] == len(data["endpoints"])
        assert shown["heading"] == "shadowproxy report"
        assert (shown["scripts"], shown["images"], shown["pwned"]) == (2, 0, None)

        # Pick one endpoint's latency: the chart is redrawn for it.
        await page.evaluate(
            """(() => {
              const select = document.getElementById("latency-endpoint");
              select.value = "1";
              select.dispatchEvent(new Event("change"));
            })()"""
        )
        await page.wait_for("document.querySelectorAll('#chart-latency polyline').length === 2")
        assert page.errors == []


async def test_drill_down_shows_examples_side_by_side_and_escapes(
    chromium: str, tmp_path: Path, report_file: tuple[Path, dict[str, Any]]
) -> None:
    html, data = report_file
    async with browser_page(chromium, tmp_path) as page:
        await page.open(html.as_uri())
        await page.evaluate(
            "document.querySelectorAll('details.endpoint').forEach((d) => { d.open = true; })"
        )
        await page.wait_for("document.querySelectorAll('details.endpoint .body svg').length > 0")
        found = await page.evaluate(
            """(() => {
              const all = [...document.querySelectorAll("details.endpoint")];
              const named = (test) => all.find((d) => test(d.querySelector(".name").textContent));
              const hostile = named((name) => name.includes("<script>"));
              const text = named((name) => name === "GET /text");
              const changed = hostile.querySelector("tr.diff.kind-changed td.val");
              const svg = hostile.querySelector(".body svg").getBoundingClientRect();
              return {
                examples: document.querySelectorAll(".example").length,
                sides: hostile.querySelectorAll(".example .sides .side").length,
                diffRows: hostile.querySelectorAll("tr.diff").length,
                highlight: getComputedStyle(changed).backgroundColor,
                exampleHead: hostile.querySelector(".example-head .mono").textContent,
                drillChart: [svg.width, svg.height],
                added: text.querySelectorAll(".excerpt .diff-add").length,
                removed: text.querySelectorAll(".excerpt .diff-del").length,
                scripts: document.scripts.length,
                images: document.images.length,
                pwned: window.pwned === undefined ? null : window.pwned,
              };
            })()"""
        )
    expected_examples = sum(len(r["examples"]) for r in data["endpoints"])
    assert found["examples"] == expected_examples > 0
    assert found["sides"] == 2
    assert found["diffRows"] == 1
    assert found["highlight"] not in ("rgba(0, 0, 0, 0)", "transparent")
    assert found["exampleHead"] == f"GET /x{ATTACK}"
    assert found["drillChart"][0] > 100
    assert found["drillChart"][1] > 50
    assert found["added"] == 2
    assert found["removed"] == 2
    assert (found["scripts"], found["images"], found["pwned"]) == (2, 0, None)
    assert page.errors == []


async def test_live_page_refreshes_and_keeps_open_panels(chromium: str, tmp_path: Path) -> None:
    aggregator = Aggregator()
    for record in generate(2000, seed=8):
        aggregator.add(record)
    html = tmp_path / "live.html"
    html.write_text(render_html(summarise(aggregator), refresh_seconds=1))
    async with browser_page(chromium, tmp_path) as page:
        await page.open(html.as_uri())
        await page.evaluate("window.beforeRefresh = true")
        await page.evaluate("document.querySelector('details.endpoint').open = true")
        await page.wait_for(
            "window.beforeRefresh === undefined && document.body.dataset.rendered === 'true'",
        )
        reopened = await page.evaluate(
            "document.querySelector('details.endpoint').open && "
            "document.querySelectorAll('details.endpoint .example').length > 0"
        )
        assert reopened
        assert page.errors == []


async def test_a_match_rate_just_below_1_is_not_shown_as_100_percent(
    chromium: str, tmp_path: Path
) -> None:
    aggregator = Aggregator()
    aggregator.add(exchange_record(outcome="mismatch", differences=[difference("/x", 1, 2)]))
    stats = aggregator.endpoints["GET /users/{id}"]
    stats.compared += 2_999_999  # 1 mismatch in 3 million
    stats.matches += 2_999_999
    html = tmp_path / "rate.html"
    html.write_text(render_html(summarise(aggregator)))
    async with browser_page(chromium, tmp_path) as page:
        await page.open(html.as_uri())
        shown = await page.evaluate(
            """[...document.querySelectorAll("#overall .value, #chart-match-rate text")]
              .map((e) => e.textContent)"""
        )
    assert "99.999%" in shown
    assert "100.000%" not in shown
    assert page.errors == []


async def test_the_harness_sees_console_errors(chromium: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.html"
    broken.write_text(
        "<!doctype html><body><script>document.body.dataset.rendered = 'true';"
        "console.error('seen'); undefinedCall();</script></body>"
    )
    async with browser_page(chromium, tmp_path) as page:
        await page.open(broken.as_uri())
    assert any("seen" in error for error in page.errors)
    assert any("undefinedCall" in error for error in page.errors)
