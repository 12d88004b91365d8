"""The admin listener's live report is rendered off the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from shadowproxy import admin
from shadowproxy.admin import LiveReport, build_admin_app
from shadowproxy.config import parse_config
from shadowproxy.report.html import render_html
from shadowproxy.report.live import LiveView

CONFIG_CANDIDATE = {"url": "http://127.0.0.1:2"}
CONFIG = parse_config({"primary": {"url": "http://127.0.0.1:1"}, "candidate": CONFIG_CANDIDATE})


@pytest.fixture
async def admin_url() -> AsyncIterator[str]:
    view = LiveView()
    app = build_admin_app(
        config=lambda: CONFIG,
        metrics=lambda: b"",
        report=LiveReport(summary=view.summary, title=view.title),
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.timeout(20)
async def test_a_page_that_takes_long_to_render_holds_up_nothing_else(
    admin_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendering = threading.Event()
    finish = threading.Event()

    def slow_render(*args: Any, **kwargs: Any) -> str:
        # A report of hundreds of endpoints: here, one that ends when the test says so.
        rendering.set()
        finish.wait()
        return render_html(*args, **kwargs)

    monkeypatch.setattr(admin, "render_html", slow_render)
    async with aiohttp.ClientSession() as client:
        page = asyncio.ensure_future(client.get(admin_url + "/report"))
        await asyncio.to_thread(rendering.wait)
        # Rendered on the event loop, the page would hold this request up for good.
        async with client.get(admin_url + "/healthz") as response:
            assert response.status == 200
        finish.set()
        async with await page as response:
            assert response.status == 200
            assert "<html" in (await response.text()).lower()


@pytest.mark.timeout(20)
async def test_readiness_probes_a_unix_socket_primary(tmp_path: Any) -> None:
    path = str(tmp_path / "primary.sock")
    config = parse_config({"primary": {"url": f"unix://{path}"}, "candidate": CONFIG_CANDIDATE})
    assert not await admin.primary_reachable(config)  # no socket yet: not ready, no error
    server = await asyncio.start_unix_server(lambda _r, w: w.close(), path)
    async with server:
        assert await admin.primary_reachable(config)
