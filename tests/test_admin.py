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
from tests.conftest import run_cli

CONFIG_CANDIDATE = {"url": "http://127.0.0.1:2"}
CONFIG = parse_config({"primary": {"url": "http://127.0.0.1:1"}, "candidate": CONFIG_CANDIDATE})


async def admin_listener(host: str) -> tuple[web.AppRunner, int]:
    """The admin app of ``CONFIG`` on ``host`` and a free port."""
    view = LiveView()
    app = build_admin_app(
        config=lambda: CONFIG,
        metrics=lambda: b"",
        report=LiveReport(summary=view.summary, title=view.title),
    )
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host, 0).start()
    return runner, runner.addresses[0][1]


@pytest.fixture
async def admin_url() -> AsyncIterator[str]:
    runner, port = await admin_listener("127.0.0.1")
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


@pytest.mark.timeout(30)
@pytest.mark.parametrize("form", ["text", "mapping"])
async def test_healthcheck_command_reaches_the_admin_listener_the_config_names(
    tmp_path: Any, form: str
) -> None:
    runner, port = await admin_listener("0.0.0.0")  # every interface: reached by loopback
    admin = f"'0.0.0.0:{port}'" if form == "text" else f"{{host: 0.0.0.0, port: {port}}}"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"primary: {{url: 'http://127.0.0.1:1'}}\ncandidate: {{url: 'http://127.0.0.1:2'}}\n"
        f"admin: {admin}\n"
    )
    try:
        healthy = await asyncio.to_thread(run_cli, "healthcheck", "--config", str(config))
        assert healthy.returncode == 0, healthy.stderr
        ready = await asyncio.to_thread(run_cli, "healthcheck", "--ready", "-c", str(config))
        assert ready.returncode == 1  # the primary (port 1) is not there
        assert "/readyz" in ready.stderr
        assert "HTTP 503" in ready.stderr
    finally:
        await runner.cleanup()
    gone = await asyncio.to_thread(run_cli, "healthcheck", "--config", str(config))
    assert gone.returncode == 1
    assert "Traceback" not in gone.stderr


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1", 200),
        ("localhost:9901", 200),
        ("[::1]:9901", 200),
        ("127.5.6.7:80", 200),
        ("attacker.example:9901", 403),  # a page rebound to 127.0.0.1, read by a browser
        ("127.0.0.1.attacker.example", 403),
        ("", 403),
    ],
)
async def test_on_loopback_sensitive_pages_answer_only_hosts_naming_this_machine(
    admin_url: str, host: str, status: int
) -> None:
    async with aiohttp.ClientSession() as client:
        for path in ("/config", "/report.json"):
            async with client.get(admin_url + path, headers={"Host": host}) as response:
                assert response.status == status, (path, await response.text())
        async with client.get(admin_url + "/healthz", headers={"Host": host}) as response:
            assert response.status == 200  # health and metrics reveal nothing


async def test_on_loopback_a_token_lets_any_host_in() -> None:
    config = parse_config(
        {"primary": {"url": "http://127.0.0.1:1"}, "candidate": CONFIG_CANDIDATE}
        | {"admin_token": "s3cret-token"}
    )
    app = build_admin_app(config=lambda: config, metrics=lambda: b"")
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/config"
    try:
        async with aiohttp.ClientSession() as client:
            headers = {"Host": "proxy.internal"}
            async with client.get(url, headers=headers) as response:
                assert response.status == 401
            headers["Authorization"] = "Bearer s3cret-token"
            async with client.get(url, headers=headers) as response:
                assert response.status == 200
    finally:
        await runner.cleanup()
