"""``python -m shadowproxy.demo``: its traffic and backends, and the whole run end to end."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from shadowproxy.demo import (
    BROKEN_USER,
    DEFAULT_REQUESTS,
    STALLED_USER,
    DemoRequest,
    Variant,
    answer,
    traffic,
)

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"
RUN_TIMEOUT = 60
CLIENT_LINE = re.compile(
    r"responses identical to the primary's: (\d+)/(\d+) \((\d+) different, (\d+) failed\)"
)
MIRRORED_LINE = re.compile(r"the candidate got (\d+) mirrored copies")


# --- the demo API and its traffic -----------------------------------------------------------


def test_default_traffic_shows_every_kind_of_difference() -> None:
    paths = {request.path for request in traffic(DEFAULT_REQUESTS)}
    assert f"/users/{BROKEN_USER}" in paths
    assert f"/users/{STALLED_USER}/orders" in paths
    assert any(path.startswith("/products?page=") for path in paths)
    assert "/health" in paths


def test_traffic_is_the_same_on_every_run() -> None:
    assert traffic(50) == traffic(50)


@pytest.mark.parametrize(
    ("path", "same"),
    [
        ("/health", True),
        ("/users/7", True),
        ("/users/999", True),
        ("/products?page=1", True),
        ("/products?page=2", False),
        ("/users/3/orders", False),
        (f"/users/{BROKEN_USER}", False),
    ],
)
def test_candidate_differs_where_the_demo_says(path: str, same: bool) -> None:
    request = DemoRequest("GET", path)
    primary, candidate = answer(Variant.PRIMARY, request), answer(Variant.CANDIDATE, request)
    assert (primary == candidate) is same


def test_candidate_stalls_on_one_rare_request() -> None:
    request = DemoRequest("GET", f"/users/{STALLED_USER}/orders")
    assert answer(Variant.CANDIDATE, request).stall
    assert not answer(Variant.PRIMARY, request).stall


# --- the demo as a newcomer runs it ---------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Loopback ports the kernel just handed out; held together so they are distinct."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


@pytest.fixture
def demo_config(tmp_path: Path) -> Path:
    """A copy of config/demo.yaml on free ports, logging into the test's directory."""
    listen, admin, primary, candidate = free_ports(4)
    data: dict[str, Any] = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    data["listen"] = f"127.0.0.1:{listen}"
    data["admin"] = f"127.0.0.1:{admin}"
    data["primary"]["url"] = f"http://127.0.0.1:{primary}"
    data["candidate"]["url"] = f"http://127.0.0.1:{candidate}"
    data["log"]["path"] = str(tmp_path / "out" / "discrepancies.jsonl")
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def run_demo(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shadowproxy.demo", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
        cwd=config.parent,
    )


def exchange_records(log: Path) -> list[dict[str, Any]]:
    records = [orjson.loads(line) for line in log.read_bytes().splitlines() if line.strip()]
    return [r for r in records if r.get("event") == "exchange"]


@pytest.mark.e2e
@pytest.mark.timeout(2 * RUN_TIMEOUT + 10)
def test_demo_runs_end_to_end_and_again(demo_config: Path) -> None:
    log = demo_config.parent / "out" / "discrepancies.jsonl"
    for _ in range(2):  # the second run must start afresh: same ports, an emptied log
        result = run_demo(demo_config, "--requests", "60")
        assert result.returncode == 0, result.stdout + result.stderr

        client = CLIENT_LINE.search(result.stdout)
        assert client is not None, result.stdout
        identical, sent, different, failed = map(int, client.groups())
        assert (identical, sent, different, failed) == (60, 60, 0, 0)

        records = exchange_records(log)
        mirrored = MIRRORED_LINE.search(result.stdout)
        assert mirrored is not None, result.stdout
        assert len(records) == int(mirrored.group(1)) > 0
        assert any(r["outcome"] == "mismatch" for r in records)
        assert str(log.resolve()) in result.stdout


def test_demo_names_the_port_that_is_taken(demo_config: Path) -> None:
    taken = yaml.safe_load(demo_config.read_text(encoding="utf-8"))["listen"]
    host, _, port = taken.rpartition(":")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen()
        result = run_demo(demo_config, "--requests", "1")
    assert result.returncode == 1
    assert f"{taken} (listen)" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_refuses_a_log_on_standard_output(demo_config: Path) -> None:
    data = yaml.safe_load(demo_config.read_text(encoding="utf-8"))
    data["log"]["path"] = "-"
    demo_config.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = run_demo(demo_config, "--requests", "1")
    assert result.returncode == 1
    assert "log.path" in result.stderr
