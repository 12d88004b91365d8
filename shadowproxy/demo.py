"""``python -m shadowproxy.demo``: the proxy at work on two built-in backends, in a minute.

The demo starts a primary and a candidate in this process (a small users/orders/products JSON
API on the ports named by ``primary.url`` and ``candidate.url``), runs the real proxy as a
subprocess with the same config, sends a burst of traffic through it, checks that every
client got exactly the primary's answer, stops the proxy with SIGTERM (which flushes the
discrepancy log) and summarises that log.

The candidate is the new version under test. It differs from the primary on purpose:

- ``GET /users/{id}/orders`` renames ``shipped_at`` to ``shipped_on``;
- ``GET /products?page=N`` has new prices for some products;
- ``GET /users/13`` fails with status 500;
- ``GET /users/42/orders`` stalls past ``candidate.timeout`` (a candidate_error);
- every answer comes a few milliseconds later than the primary's.

``GET /health`` and the other users are the same on both; ``POST /orders`` is answered by the
primary only, since unsafe methods are not mirrored unless ``mirror.methods`` lists them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import os
import random
import re
import signal
import socket
import sys
import time
import zlib
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from yarl import URL

from shadowproxy.config import Config, ConfigError, HostPort, load_config

DEFAULT_REQUESTS = 300
DEFAULT_CONCURRENCY = 16
SEED = 2024
"""The traffic is the same on every run, so two runs give the same summary."""

# The demo API.
USERS = 50
"""Users 1..50 exist; the traffic also asks for a few that do not (404 on both sides)."""
PRODUCTS = 60
PAGE_SIZE = 10
BROKEN_USER = 13
"""The candidate answers ``GET /users/13`` with status 500."""
STALLED_USER = 42
"""The candidate stalls on ``GET /users/42/orders`` until the proxy gives up on it."""
STALL_SECONDS = 30.0
REPRICED_EVERY = 11
"""The candidate has new prices for products 11, 22, 33, ..."""
PRIMARY_DELAY = 0.001
CANDIDATE_DELAY = 0.004
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"

# Running the proxy.
STARTUP_TIMEOUT = 20.0
STOP_MARGIN = 10.0
"""Seconds allowed beyond the proxy's own shutdown budget before it is killed."""
READER_GRACE = 5.0
STDERR_TAIL_LINES = 40
REQUEST_TIMEOUT = 10.0
TRAFFIC_TIMEOUT = 60.0
BACKEND_SHUTDOWN_TIMEOUT = 1.0

# The summary.
TOP_PLACES = 6
EXAMPLE_CHARS = 48
_INDEX = re.compile(r"(?<=/)\d+(?=/|$)")


class DemoError(Exception):
    """The demo cannot go on; the message says why, for the person who ran it."""


# --- the demo API: pure functions from a request to an answer -------------------------------


class Variant(enum.Enum):
    PRIMARY = "primary"
    CANDIDATE = "candidate"


@dataclass(frozen=True, slots=True)
class DemoRequest:
    method: str
    path: str
    """With its query string, as sent."""
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str = JSON
    stall: bool = False
    """Do not answer until the backend shuts down (or ``STALL_SECONDS`` pass)."""


def _json(status: int, data: Any) -> Answer:
    return Answer(status=status, body=orjson.dumps(data))


def _not_found(what: str) -> Answer:
    return _json(404, {"error": "not_found", "detail": f"no {what}"})


def answer(variant: Variant, request: DemoRequest) -> Answer:
    """What the demo backend ``variant`` answers to ``request``; the same on every call."""
    url = URL(request.path)
    parts = url.path.strip("/").split("/")
    if request.method == "GET":
        match parts:
            case ["health"]:
                return Answer(status=200, body=b"ok\n", content_type=TEXT)
            case ["users", user] if user.isdigit():
                return _user(variant, int(user))
            case ["users", user, "orders"] if user.isdigit():
                return _orders(variant, int(user))
            case ["products"]:
                return _products(variant, url.query.get("page", "1"))
    if request.method == "POST" and parts == ["orders"]:
        return _create_order(request.body)
    return _not_found(f"route {request.method} {url.path}")


def _user(variant: Variant, user_id: int) -> Answer:
    if not 1 <= user_id <= USERS:
        return _not_found(f"user {user_id}")
    if variant is Variant.CANDIDATE and user_id == BROKEN_USER:
        return _json(500, {"error": "internal", "detail": "'NoneType' object has no attribute"})
    name = f"user{user_id:02d}"
    return _json(
        200,
        {
            "id": user_id,
            "name": name,
            "email": f"{name}@example.com",
            "tier": ("free", "pro", "team")[user_id % 3],
            "created_at": f"2023-{1 + user_id % 12:02d}-{1 + user_id % 28:02d}T09:00:00Z",
        },
    )


def _orders(variant: Variant, user_id: int) -> Answer:
    if not 1 <= user_id <= USERS:
        return _not_found(f"user {user_id}")
    if variant is Variant.CANDIDATE and user_id == STALLED_USER:
        return Answer(status=503, body=b"{}", stall=True)
    orders = [_order(variant, user_id * 100 + n) for n in range(user_id % 4)]
    return _json(200, {"user_id": user_id, "orders": orders})


def _order(variant: Variant, order_id: int) -> dict[str, Any]:
    shipped = order_id % 3 != 0
    order: dict[str, Any] = {
        "id": order_id,
        "status": "shipped" if shipped else "pending",
        "total": round(9.5 + (order_id % 17) * 3.25, 2),
    }
    if shipped:
        renamed = "shipped_on" if variant is Variant.CANDIDATE else "shipped_at"
        order[renamed] = f"2024-05-{1 + order_id % 28:02d}T12:00:00Z"
    return order


def _products(variant: Variant, page_text: str) -> Answer:
    if not page_text.isdigit() or int(page_text) < 1:
        return _json(400, {"error": "bad_request", "detail": "page must be a positive integer"})
    page = int(page_text)
    first = (page - 1) * PAGE_SIZE + 1
    items = [
        {"id": n, "name": f"Product {n}", "price": _price(variant, n), "in_stock": n % 5 != 0}
        for n in range(first, min(first + PAGE_SIZE, PRODUCTS + 1))
    ]
    return _json(200, {"page": page, "page_size": PAGE_SIZE, "total": PRODUCTS, "items": items})


def _price(variant: Variant, product_id: int) -> float:
    price = round(4.99 + product_id * 1.5, 2)
    if variant is Variant.CANDIDATE and product_id % REPRICED_EVERY == 0:
        return round(price * 1.1, 2)
    return price


def _create_order(body: bytes) -> Answer:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("user_id"), int):
        return _json(400, {"error": "bad_request", "detail": "expected {user_id, items}"})
    order_id = 10_000 + zlib.crc32(body) % 90_000
    return _json(
        201,
        {"id": order_id, "user_id": data["user_id"], "items": data.get("items", []),
         "status": "created"},
    )  # fmt: skip


def traffic(count: int, seed: int = SEED) -> list[DemoRequest]:
    """A fixed mix: mostly reads, a few unknown ids, some order creations."""
    rng = random.Random(seed)
    return [_one_request(rng) for _ in range(count)]


def _one_request(rng: random.Random) -> DemoRequest:
    kind = rng.choices(["user", "orders", "products", "health", "create"], [35, 25, 25, 5, 10])[0]
    user = rng.randint(1, USERS + 5)
    if kind == "user":
        return DemoRequest("GET", f"/users/{user}")
    if kind == "orders":
        return DemoRequest("GET", f"/users/{user}/orders")
    if kind == "products":
        return DemoRequest("GET", f"/products?page={rng.randint(1, PRODUCTS // PAGE_SIZE + 1)}")
    if kind == "health":
        return DemoRequest("GET", "/health")
    items = [{"product_id": rng.randint(1, PRODUCTS), "quantity": rng.randint(1, 3)}]
    return DemoRequest("POST", "/orders", orjson.dumps({"user_id": user, "items": items}))


# --- the demo backends ----------------------------------------------------------------------


class DemoBackend:
    """One variant of the demo API on a loopback port, counting the requests it gets."""

    def __init__(self, variant: Variant, delay: float) -> None:
        self.variant = variant
        self.delay = delay
        self.hits: Counter[str] = Counter()
        """Requests received, by method."""
        self._closing = asyncio.Event()
        self._runner: web.ServerRunner | None = None

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        self.hits[request.method] += 1
        result = answer(self.variant, DemoRequest(request.method, request.raw_path, body))
        if result.stall:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), STALL_SECONDS)
        else:
            await asyncio.sleep(self.delay)
        return web.Response(
            status=result.status, body=result.body, headers={"Content-Type": result.content_type}
        )

    async def start(self, host: str, port: int, key: str) -> None:
        runner = web.ServerRunner(
            web.Server(self.handle), access_log=None, shutdown_timeout=BACKEND_SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        self._runner = runner
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as error:
            raise DemoError(_port_problem(f"{host}:{port}", key, error)) from None

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()


def _port_problem(address: str, key: str, error: OSError) -> str:
    reason = error.strerror or str(error)
    return (
        f"cannot listen on {address} ({key}): {reason}. Another proxy or demo may be running; "
        f"stop it or change {key} in the config."
    )


# --- the settings the demo needs from the config --------------------------------------------


@dataclass(frozen=True, slots=True)
class DemoSetup:
    config_path: Path
    config: Config
    primary: HostPort
    candidate: HostPort
    log_path: Path

    @property
    def proxy_url(self) -> str:
        return f"http://{_connectable(self.config.listen)}"


def _connectable(address: HostPort) -> str:
    """Where a local client reaches a listener bound to ``address``."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(address.host, address.host)
    return str(HostPort(host=host, port=address.port))


def demo_setup(config_path: Path, config: Config) -> DemoSetup:
    """Check that the config suits the demo: local backends and a log file to read back."""
    if config.log.path == "-":
        raise DemoError("log.path is '-' (standard output); the demo needs a file to summarise")
    return DemoSetup(
        config_path=config_path,
        config=config,
        primary=_local_backend(config.primary.url, "primary.url"),
        candidate=_local_backend(config.candidate.url, "candidate.url"),
        log_path=Path(config.log.path),
    )


def _local_backend(url_text: str, key: str) -> HostPort:
    url = URL(url_text)
    host = url.host or ""
    if url.scheme != "http" or not HostPort(host=host, port=0).is_loopback or url.path != "/":
        raise DemoError(
            f"{key} is {url_text}; the demo runs its backends itself and needs plain "
            "http on a loopback address with no path, such as http://127.0.0.1:18090"
        )
    if url.explicit_port is None:
        raise DemoError(f"{key} is {url_text}; name the port the demo backend should use")
    return HostPort(host=host, port=url.explicit_port)


def check_free(address: HostPort, key: str) -> None:
    """Fail early, naming the config key, when a port the proxy needs is taken."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address.host, address.port))
        except OSError as error:
            raise DemoError(_port_problem(str(address), key, error)) from None


def fresh_log(path: Path) -> None:
    """Create the log's directory and empty the file, so the summary covers this run only."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    except OSError as error:
        raise DemoError(f"cannot prepare the log file {path}: {error}") from None


# --- the proxy subprocess -------------------------------------------------------------------


@dataclass
class ProxyProcess:
    """The real proxy, ``python -m shadowproxy run``, with its operational log kept in a tail.

    It runs in a process group of its own, so that the demo can end it with all its worker
    processes if it does not stop on SIGTERM, and so that it outlives nothing of the demo.
    """

    process: asyncio.subprocess.Process
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_TAIL_LINES))
    events: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False
    _reader: asyncio.Task[None] | None = None

    def stderr_text(self) -> str:
        return "\n".join(f"  | {line}" for line in self.tail) or "  (nothing on stderr)"

    def _take(self, raw: bytes) -> dict[str, Any] | None:
        self.tail.append(raw.decode("utf-8", "replace").rstrip())
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(event, dict):
            return None
        self.events.append(event)
        return event

    async def wait_listening(self, timeout: float) -> dict[str, Any]:
        """Until the proxy reports it is up: the ``listening`` event naming the admin listener
        (worker processes report one each, without it, before their supervisor does)."""
        stream = self.process.stderr
        assert stream is not None
        try:
            async with asyncio.timeout(timeout):
                while raw := await stream.readline():
                    event = self._take(raw)
                    if event and event.get("event") == "listening" and event.get("admin"):
                        self._reader = asyncio.create_task(self._read_rest(stream))
                        return event
                code = await self.process.wait()
        except TimeoutError:
            await self.kill()
            raise DemoError(
                f"the proxy did not report 'listening' within {timeout:g} s; its stderr:\n"
                + self.stderr_text()
            ) from None
        raise DemoError(
            f"the proxy exited with status {code} before listening; its stderr:\n"
            + self.stderr_text()
        )

    async def _read_rest(self, stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            self._take(raw)

    async def stop(self, timeout: float) -> None:
        """SIGTERM, as an orchestrator would send it: the proxy drains, flushes the log and
        exits, and so do its workers (their stderr closes when the last one is gone)."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                code = await self.process.wait()
                if self._reader is not None:
                    await self._reader
        except TimeoutError:
            await self.kill()
            raise DemoError(
                f"the proxy did not stop within {timeout:g} s of SIGTERM; its stderr:\n"
                + self.stderr_text()
            ) from None
        self.stopped = True
        if code != 0:
            raise DemoError(
                f"the proxy exited with status {code}; its stderr:\n" + self.stderr_text()
            )

    async def kill(self) -> None:
        """End the proxy and every process of its group at once, unless it stopped already."""
        if not self.stopped:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()
            self.stopped = True
        if self._reader is not None:
            try:
                async with asyncio.timeout(READER_GRACE):
                    await self._reader  # ends once every process holding stderr is gone
            except TimeoutError:
                self._reader.cancel()

    def events_named(self, name: str) -> list[dict[str, Any]]:
        """Every process of the proxy (supervisor and workers) reports its own."""
        return [e for e in self.events if e.get("event") == name]


def proxy_command(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "shadowproxy", "run", "--config", str(config_path)]


async def start_proxy(config_path: Path) -> ProxyProcess:
    process = await asyncio.create_subprocess_exec(
        *proxy_command(config_path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        process_group=0,
    )
    return ProxyProcess(process)


def stop_budget(config: Config) -> float:
    return config.shutdown_timeout + config.mirror.shutdown_grace + STOP_MARGIN


# --- the traffic ----------------------------------------------------------------------------


@dataclass
class ClientTally:
    """What the clients saw, judged against what the primary answers on its own."""

    sent: int = 0
    identical: int = 0
    different: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    by_method: Counter[str] = field(default_factory=Counter)


async def send_traffic(
    proxy_url: str, plan: Sequence[DemoRequest], concurrency: int
) -> ClientTally:
    tally = ClientTally()
    pending: Iterator[DemoRequest] = iter(plan)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            for request in pending:  # the workers share one iterator: each request once
                await _send_one(session, proxy_url, request, tally)

        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
    return tally


async def _send_one(
    session: aiohttp.ClientSession, proxy_url: str, request: DemoRequest, tally: ClientTally
) -> None:
    tally.sent += 1
    tally.by_method[request.method] += 1
    expected = answer(Variant.PRIMARY, request)
    headers = {"Content-Type": JSON} if request.body else {}
    label = f"{request.method} {request.path}"
    try:
        async with session.request(
            request.method,
            URL(proxy_url + request.path, encoded=True),
            data=request.body or None,
            headers=headers,
        ) as response:
            body = await response.read()
            got = (response.status, response.headers.get("Content-Type"), body)
    except (aiohttp.ClientError, TimeoutError) as error:
        tally.failed.append(f"{label}: {type(error).__name__}: {error}")
        return
    if got == (expected.status, expected.content_type, expected.body):
        tally.identical += 1
    else:
        tally.different.append(f"{label}: got status {got[0]}, expected {expected.status}")


# --- the discrepancy log, summarised --------------------------------------------------------


@dataclass
class LogSummary:
    exchanges: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    failure_kinds: Counter[str] = field(default_factory=Counter)
    failure_examples: dict[str, str] = field(default_factory=dict)
    endpoints: dict[str, Counter[str]] = field(default_factory=dict)
    places: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(endpoint, place) -> exchanges that differ there."""
    examples: dict[tuple[str, str], str] = field(default_factory=dict)
    unreadable: int = 0


def summarise_log(path: Path) -> LogSummary:
    summary = LogSummary()
    try:
        lines = path.read_bytes().splitlines()
    except OSError as error:
        raise DemoError(f"cannot read the discrepancy log {path}: {error}") from None
    for line in lines:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            summary.unreadable += 1
            continue
        if isinstance(record, dict) and record.get("event") == "exchange":
            _add_record(summary, record)
    return summary


def _add_record(summary: LogSummary, record: Mapping[str, Any]) -> None:
    endpoint = str(record.get("endpoint"))
    outcome = str(record.get("outcome"))
    summary.exchanges += 1
    summary.outcomes[outcome] += 1
    summary.endpoints.setdefault(endpoint, Counter())[outcome] += 1
    label = f"{record.get('method')} {record.get('path')}"
    if outcome == "candidate_error":
        candidate = record.get("candidate")
        error = str(candidate.get("error") if isinstance(candidate, dict) else None)
        summary.failure_kinds[error] += 1
        summary.failure_examples.setdefault(error, label)
    seen: set[str] = set()
    for difference in _headline_differences(record.get("differences")):
        place = _place(difference)
        if place in seen:
            continue
        seen.add(place)
        summary.places[endpoint, place] += 1
        summary.examples.setdefault((endpoint, place), f"{label}: {_values(difference)}")


def _headline_differences(differences: Any) -> Sequence[Mapping[str, Any]]:
    """The differences worth a line: with another status, a different body is no news."""
    listed = [d for d in differences or () if isinstance(d, dict)]
    status = [d for d in listed if d.get("where") == "status"]
    return status or listed


def _place(difference: Mapping[str, Any]) -> str:
    where, kind = difference.get("where"), difference.get("kind")
    if where == "status":
        return "status"
    path = _INDEX.sub("*", str(difference.get("path", "")))
    return f"{where} {path or '/'} ({kind})"


def _values(difference: Mapping[str, Any]) -> str:
    kind = difference.get("kind")
    primary = "(absent)" if kind == "added" else _short(difference.get("primary"))
    candidate = "(absent)" if kind == "removed" else _short(difference.get("candidate"))
    return f"primary {primary}, candidate {candidate}"


def _short(value: Any) -> str:
    text = orjson.dumps(value, default=str).decode()
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 3] + "..."


# --- output ---------------------------------------------------------------------------------


def say(text: str = "") -> None:
    print(text, flush=True)


def print_intro(setup: DemoSetup, requests: int, concurrency: int) -> None:
    config = setup.config
    say(f"shadowproxy demo with {setup.config_path}")
    say(f"  demo primary    {config.primary.url}")
    say(
        f"  demo candidate  {config.candidate.url}  (renames a field, reprices some products, "
        "fails on rare ids, a few ms slower)"
    )
    say(f"  proxy           python -m shadowproxy run --config {setup.config_path}")
    say(f"  traffic         {requests} requests, {concurrency} at a time")
    say()


def print_clients(tally: ClientTally, primary: DemoBackend, candidate: DemoBackend) -> None:
    say("What clients saw")
    say(
        f"  responses identical to the primary's: {tally.identical}/{tally.sent} "
        f"({len(tally.different)} different, {len(tally.failed)} failed)"
    )
    for problem in (tally.different + tally.failed)[:5]:
        say(f"    {problem}")
    mirrored = sum(candidate.hits.values())
    unmirrored = ", ".join(m for m in sorted(tally.by_method) if not candidate.hits[m])
    note = f" ({unmirrored} not mirrored)" if unmirrored else ""
    say(
        f"  the primary served {sum(primary.hits.values())} requests; "
        f"the candidate got {mirrored} mirrored copies{note}"
    )
    say()


def print_log(summary: LogSummary, log_path: Path) -> None:
    say(f"What the proxy compared ({log_path})")
    say(f"  exchanges logged   {summary.exchanges:>5}")
    for outcome in ("match", "mismatch", "candidate_error"):
        say(f"    {outcome:<16} {summary.outcomes[outcome]:>5}")
    for kind, count in summary.failure_kinds.most_common():
        say(f"      {kind:<14} {count:>5}   e.g. {summary.failure_examples[kind]}")
    if summary.unreadable:
        say(f"  unreadable lines   {summary.unreadable:>5}")
    say()
    say("  by endpoint                  compared  mismatch  cand. error")
    for endpoint, counts in sorted(summary.endpoints.items()):
        compared = sum(counts.values())
        say(
            f"    {endpoint:<26} {compared:>8}  {counts['mismatch']:>8}  "
            f"{counts['candidate_error']:>11}"
        )
    say()
    if summary.places:
        say("  where they differ, most exchanges first")
        for (endpoint, place), count in summary.places.most_common(TOP_PLACES):
            say(f"    {count:>4}  {endpoint}  {place}")
            say(f"          e.g. {summary.examples[endpoint, place]}")
        say()


def print_next(log_path: Path) -> None:
    say(f"discrepancy log: {log_path.resolve()} (one JSON object per exchange)")
    say(f"full report:     {_python()} -m shadowproxy report {log_path}")


def _python() -> str:
    """This interpreter as a reader can type it: relative when it lives below this directory."""
    executable = Path(sys.executable)
    with contextlib.suppress(ValueError):
        return str(executable.relative_to(Path.cwd()))
    return "python"


# --- the run --------------------------------------------------------------------------------


async def run_demo(setup: DemoSetup, requests: int, concurrency: int) -> int:
    # SIGTERM ends the demo the way Ctrl-C does: the proxy and the backends are cleaned up.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    config = setup.config
    check_free(config.listen, "listen")
    check_free(config.admin, "admin")
    primary = DemoBackend(Variant.PRIMARY, PRIMARY_DELAY)
    candidate = DemoBackend(Variant.CANDIDATE, CANDIDATE_DELAY)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(primary.close)
        stack.push_async_callback(candidate.close)
        await primary.start(setup.primary.host, setup.primary.port, "primary.url")
        await candidate.start(setup.candidate.host, setup.candidate.port, "candidate.url")
        fresh_log(setup.log_path)
        print_intro(setup, requests, concurrency)

        proxy = await start_proxy(setup.config_path)
        stack.push_async_callback(proxy.kill)
        await proxy.wait_listening(STARTUP_TIMEOUT)
        tally = await drive(setup, proxy, requests, concurrency)
        await proxy.stop(stop_budget(config))
        say("stopped the proxy with SIGTERM; its log is flushed")
        say()

    print_clients(tally, primary, candidate)
    summary = summarise_log(setup.log_path)
    print_log(summary, setup.log_path)
    print_next(setup.log_path)
    return _verdict(tally, summary, proxy)


async def drive(
    setup: DemoSetup, proxy: ProxyProcess, requests: int, concurrency: int
) -> ClientTally:
    """Send the demo traffic through the running proxy, within a deadline."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(TRAFFIC_TIMEOUT):
            tally = await send_traffic(setup.proxy_url, traffic(requests), concurrency)
    except TimeoutError:
        raise DemoError(
            f"the traffic did not finish within {TRAFFIC_TIMEOUT:g} s; the proxy's stderr:\n"
            + proxy.stderr_text()
        ) from None
    elapsed = time.perf_counter() - started
    say(f"sent {tally.sent} requests through the proxy in {elapsed:.2f} s")
    return tally


def _verdict(tally: ClientTally, summary: LogSummary, proxy: ProxyProcess) -> int:
    lost = sum(int(e.get("log_records_lost") or 0) for e in proxy.events_named("stopped"))
    if lost:
        say(f"warning: the proxy could not write {lost} log records")
    if summary.exchanges == 0:
        say("warning: nothing was compared; is mirror.sample_rate 0?")
    if tally.different or tally.failed:
        print(
            "demo: failed: some clients did not get the primary's answer (see above)",
            file=sys.stderr,
        )
        return 1
    return 0


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m shadowproxy.demo",
        description="Run the proxy between two built-in demo backends and summarise what it saw.",
    )
    parser.add_argument("--config", "-c", required=True, type=Path, help="e.g. config/demo.yaml")
    parser.add_argument(
        "--requests", "-n", type=_positive_int, default=DEFAULT_REQUESTS,
        help=f"requests to send (default {DEFAULT_REQUESTS})",
    )  # fmt: skip
    parser.add_argument(
        "--concurrency", type=_positive_int, default=DEFAULT_CONCURRENCY,
        help=f"requests in flight at once (default {DEFAULT_CONCURRENCY})",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"demo: invalid config {args.config}:\n{error}", file=sys.stderr)
        return 2
    try:
        setup = demo_setup(args.config, config)
        return asyncio.run(run_demo(setup, args.requests, args.concurrency))
    except DemoError as error:
        print(f"demo: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130
    except asyncio.CancelledError:
        print("demo: terminated", file=sys.stderr)
        return 143


if __name__ == "__main__":
    raise SystemExit(main())
