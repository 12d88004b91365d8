"""Throughput of ``shadowproxy replay`` against a fast local backend.

    .venv/bin/python benchmarks/replay_bench.py                 # 100,000 requests
    .venv/bin/python benchmarks/replay_bench.py --quick         # 20,000 requests
    .venv/bin/python benchmarks/replay_bench.py --requests 50000 --concurrency 64 --check

A capture of JSON GET exchanges is generated in a temporary directory; a minimal keep-alive
HTTP server (its own process, so it does not share the replay's core) answers every request
with the recorded body, so every exchange is compared in full and matches. ``--mismatch``
changes one field, so every exchange goes through the diff engine and logs a difference.
The replay runs as the real command (``python -m shadowproxy replay``) writing its log to a
file. Reported: requests per second over the replay itself (from the command's summary
line), the wall time of the whole command, its peak RSS. ``--check`` exits 1 below
``TARGET_RPS``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

import orjson

from shadowproxy.har import Captured, build_entry
from shadowproxy.redact import Redactor

FULL_REQUESTS = 100_000
QUICK_REQUESTS = 20_000
TARGET_RPS = 2000.0
BODY = orjson.dumps(
    {"id": 42, "name": "widget", "price": 19.99, "tags": ["a", "b", "c"], "stock": {"eu": 3}}
)
CHANGED = BODY.replace(b"19.99", b"21.99")


def http_response(body: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    return head + str(len(body)).encode() + b"\r\n\r\n" + body


class _Answer(asyncio.Protocol):
    """Answers each request head (bodiless GETs) with the same response, keeping alive."""

    response = http_response(BODY)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        count = self.buffer.count(b"\r\n\r\n")
        if count:
            self.buffer = self.buffer[self.buffer.rfind(b"\r\n\r\n") + 4 :]
            self.transport.write(self.response * count)


def _serve(sock: socket.socket, body: bytes) -> None:
    _Answer.response = http_response(body)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Answer, sock=sock)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def write_capture(path: Path, requests: int) -> None:
    redactor = Redactor([])
    with path.open("wb") as out:
        for number in range(requests):
            entry = build_entry(
                Captured(
                    id=f"r{number}",
                    endpoint="GET /items/{id}",
                    started_at=1_700_000_000 + number / 1000,
                    method="GET",
                    scheme="http",
                    raw_path=f"/items/{number % 5000}?view=full",
                    http_version="HTTP/1.1",
                    request_headers=(("Host", "shop.test"), ("Accept", "application/json")),
                    request_body=b"",
                    request_size=0,
                    status=200,
                    reason="OK",
                    response_headers=(("Content-Type", "application/json"),),
                    response_body=BODY,
                    response_size=len(BODY),
                    latency_ms=3.0,
                ),
                redactor,
                1 << 20,
            )
            out.write(orjson.dumps(entry) + b"\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, help=f"requests to replay ({FULL_REQUESTS:,})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REQUESTS:,} requests")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--check", action="store_true", help=f"exit 1 below {TARGET_RPS:g}/s")
    parser.add_argument(
        "--mismatch",
        action="store_true",
        help="the backend changes one field, so every exchange is diffed and logged in full",
    )
    parser.add_argument(
        "--verdict", action="store_true", help="judge the run too (--verdict with one bar)"
    )
    args = parser.parse_args(argv)
    requests = args.requests or (QUICK_REQUESTS if args.quick else FULL_REQUESTS)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    server = multiprocessing.get_context("fork").Process(
        target=_serve, args=(sock, CHANGED if args.mismatch else BODY), daemon=True
    )
    server.start()
    sock.close()
    try:
        with tempfile.TemporaryDirectory(prefix="replay-bench-") as tmp:
            capture = Path(tmp) / "capture.jsonl"
            started = time.perf_counter()
            write_capture(capture, requests)
            size = capture.stat().st_size
            print(
                f"capture: {requests:,} entries, {size / 1e6:.1f} MB, "
                f"written in {time.perf_counter() - started:.1f} s",
                flush=True,
            )
            command = [
                sys.executable, "-m", "shadowproxy", "replay", str(capture),
                "--candidate", f"http://127.0.0.1:{port}",
                "--concurrency", str(args.concurrency),
                "--log", str(Path(tmp) / "log.jsonl"),
                "--no-progress",
                *(("--verdict", "--max-mismatch-rate", "0.01") if args.verdict else ()),
            ]  # fmt: skip
            started = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - started
            peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            if result.returncode != 0:
                print(result.stderr, file=sys.stderr)
                return 2
            summary = next(line for line in result.stderr.splitlines() if " compared in " in line)
            print(summary)
            match = re.search(r"\(([\d,]+) req/s\)", summary)
            rps = float(match.group(1).replace(",", "")) if match else requests / wall
            log_lines = sum(1 for _ in (Path(tmp) / "log.jsonl").open("rb"))
    finally:
        server.terminate()
        server.join(5)
    print(
        f"replay: {rps:,.0f} requests/s (concurrency {args.concurrency}), "
        f"{requests / wall:,.0f}/s including start-up, {wall:.1f} s wall, "
        f"peak RSS {peak_mib:.0f} MiB, {log_lines:,} log records, "
        f"{os.cpu_count()} cores"
    )
    if args.check and rps < TARGET_RPS:
        print(f"below the target of {TARGET_RPS:,.0f} requests/s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
