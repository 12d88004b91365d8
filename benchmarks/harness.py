"""The pieces the proxy benchmarks are built from: tools, backends, proxies, load, /proc.

Everything runs on loopback, as the current user, from a temporary directory: nginx instances
with their own prefix and config, the shadowproxy supervisor with a generated config, and wrk
with a small Lua script that reports its summary as JSON. Nothing here needs anything outside
the standard library, so the driver also runs where the proxy's virtualenv is not active.
"""

from __future__ import annotations

import contextlib
import ctypes
import getpass
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "benchmarks"
RESULTS_DIR = BENCH_DIR / "results"
TASKCOUNT_DIR = BENCH_DIR / "taskcount"
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
DEBIAN_PACKAGES = {"nginx": "nginx", "wrk": "wrk"}
ECHO_PACKAGE = "libnginx-mod-http-echo"
STARTUP_TIMEOUT = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

SLOW_DELAY = 0.2
"""Seconds the slow candidate waits before it answers."""


class BenchError(Exception):
    """The benchmark cannot run here; the message says why and what to do."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- tools ----------------------------------------------------------------------------------


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def _apt_install(packages: list[str]) -> None:
    log(f"installing Debian packages: {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


@dataclass
class Tools:
    nginx: str
    wrk: str
    echo_module: Path | None
    """nginx's echo module (for ``echo_sleep``); without it the slow candidate is a small
    asyncio server instead."""

    def versions(self) -> dict[str, str]:
        nginx = subprocess.run([self.nginx, "-v"], capture_output=True, text=True).stderr
        wrk = subprocess.run([self.wrk, "-v"], capture_output=True, text=True).stdout
        return {
            "nginx": nginx.strip().removeprefix("nginx version: "),
            "wrk": wrk.splitlines()[0].strip() if wrk else "?",
        }


def ensure_tools(*, install: bool) -> Tools:
    """nginx and wrk, installed with apt-get when missing and allowed (root); the echo module
    when it can be had the same way."""
    missing = [pkg for name, pkg in DEBIAN_PACKAGES.items() if not _which(name)]
    can_install = install and os.geteuid() == 0 and shutil.which("apt-get") is not None
    wanted = list(missing)
    if not ECHO_MODULE.exists() and can_install:
        wanted.append(ECHO_PACKAGE)
    if wanted and can_install:
        try:
            _apt_install(wanted)
        except (subprocess.CalledProcessError, OSError) as error:
            log(f"apt-get failed: {error}")
    missing = [pkg for name, pkg in DEBIAN_PACKAGES.items() if not _which(name)]
    if missing:
        how = (
            "run as root to let this script install them with apt-get"
            if os.geteuid() != 0
            else "apt-get could not install them"
            if install
            else "installing was turned off (--no-install)"
        )
        raise BenchError(
            f"missing {', '.join(missing)}: install the Debian packages "
            f"({'sudo ' if os.geteuid() else ''}apt-get install {' '.join(missing)}), "
            f"or make sysdeps; {how}"
        )
    nginx, wrk = find_nginx(), shutil.which("wrk")
    if nginx is None or wrk is None:
        raise BenchError("nginx or wrk vanished while the benchmark started")
    return Tools(nginx=nginx, wrk=wrk, echo_module=ECHO_MODULE if ECHO_MODULE.exists() else None)


def _which(name: str) -> str | None:
    return find_nginx() if name == "nginx" else shutil.which(name)


def raise_fd_limit() -> None:
    """Child processes inherit this: thousands of connections need thousands of descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, alive: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise BenchError(f"the server for port {port} exited during start-up")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise BenchError(f"nothing listens on port {port} after {timeout:g} s")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


# --- payloads -------------------------------------------------------------------------------


def order_document(*, candidate: bool) -> dict[str, Any]:
    """An order as a JSON API returns it, about 1 KB; the candidate's differs in two fields."""
    items = [
        {
            "sku": f"SKU-{1000 + i}",
            "name": name,
            "quantity": qty,
            "unit_price": price,
            "currency": "EUR",
            "tags": tags,
        }
        for i, (name, qty, price, tags) in enumerate(
            [
                ("Espresso beans, 1 kg", 2, 24.9, ["coffee", "whole-bean"]),
                ("Ceramic pour-over dripper", 1, 32.5, ["brewing"]),
                ("Paper filters, 100 pcs", 3, 4.99, ["brewing", "consumable"]),
            ]
        )
    ]
    return {
        "id": "ord_7f3c2a91",
        "status": "in_transit" if candidate else "shipped",
        "created_at": "2024-06-11T09:58:12Z",
        "updated_at": "2024-06-11T10:02:40Z",
        "customer": {
            "id": "cus_41d9",
            "name": "Ada Example",
            "email": "ada@example.org",
            "loyalty_tier": "gold",
        },
        "shipping": {
            "method": "standard",
            "carrier": "DHL",
            "tracking": "JD014600006281234567",
            "address": {
                "line1": "Example Street 12",
                "city": "Berlin",
                "postcode": "10115",
                "country": "DE",
            },
        },
        "items": items,
        "totals": {
            "subtotal": 97.27,
            "shipping": 4.9,
            "tax": 19.41,
            "total": 121.59 if candidate else 121.58,
            "currency": "EUR",
        },
        "links": {"self": "/api/orders/ord_7f3c2a91", "invoice": "/api/invoices/inv_9921"},
    }


def write_payloads(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, candidate in (("primary", False), ("candidate", True)):
        path = directory / f"{name}.json"
        path.write_text(json.dumps(order_document(candidate=candidate), indent=1) + "\n")
        paths[name] = path
    return paths


# --- /proc ----------------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that are alive now."""
    children = _children_map()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def command_of(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


# --- processes ------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None


def _die_with_parent() -> None:
    """Runs in each child before exec: SIGTERM when the benchmark dies, even by SIGKILL (a
    test timeout), so no nginx or proxy is left behind (Linux only; elsewhere a no-op)."""
    if _LIBC is not None and hasattr(_LIBC, "prctl"):
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` stops what it started."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


@dataclass
class Server:
    """A child process serving on loopback."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _spawn(
    name: str,
    command: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Server:
    log_file = log_path.open("ab")
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            env=env,
            cwd=cwd,
            preexec_fn=_die_with_parent,
        )
    finally:
        log_file.close()
    return Server(name, process, log_path)


NGINX_MAIN = """\
{user}
worker_processes {workers};
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile {nofile};
{modules}
events {{
    worker_connections 16384;
}}
http {{
    access_log off;
    server_tokens off;
    default_type application/json;
    types {{ }}
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
{body}
}}
"""


def start_nginx(
    tools: Tools, workdir: Path, name: str, http_body: str, *, workers: str, echo: bool = False
) -> Server:
    """An nginx of our own: its prefix, config, pid file and logs in ``workdir/name``."""
    prefix = workdir / name
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    # As root the master would hand its workers to "nobody"; keep them as the current user.
    user = f"user {getpass.getuser()};" if os.geteuid() == 0 else ""
    modules = f"load_module {tools.echo_module};" if echo and tools.echo_module else ""
    conf = prefix / "nginx.conf"
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    conf.write_text(
        NGINX_MAIN.format(
            user=user,
            workers=workers,
            prefix=prefix,
            modules=modules,
            body=http_body,
            nofile=nofile,
        )
    )
    command = [tools.nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    check = subprocess.run([*command, "-t", "-q"], capture_output=True, text=True)
    if check.returncode != 0:
        raise BenchError(f"nginx config {conf} rejected:\n{check.stderr.strip()}")
    return _spawn(name, command, prefix / "error.log")


@dataclass
class Backends:
    """The primary, the candidates and their ports; the slow candidate may be its own server."""

    primary: int
    candidate: int
    slow_candidate: int
    flaky_candidate: int
    twin_candidate: int
    """Serves the primary's own JSON: every comparison matches."""
    slow_kind: str
    servers: list[Server] = field(default_factory=list)

    def stop(self) -> None:
        for server in self.servers:
            server.stop(signal.SIGQUIT)

    def pids(self) -> list[int]:
        return [pid for s in self.servers for pid in process_tree(s.pid)]


def start_backends(
    tools: Tools, workdir: Path, *, flaky_percent: float = 10.0, slow_in_nginx: bool = True
) -> Backends:
    """One nginx (one worker) serves the primary's and the candidates' JSON from files.

    The slow candidate sleeps ``SLOW_DELAY`` in nginx (echo module) when it is installed and
    ``slow_in_nginx``, else in a small asyncio server; the flaky one fails ``flaky_percent``
    of its requests, half as 500s and half by closing the connection without an answer.
    """
    data = workdir / "data"
    write_payloads(data)
    ports = [free_port() for _ in range(5)]
    primary, candidate, slow, flaky, twin = ports
    half = f"{flaky_percent / 2:g}%"
    slow_server = ""
    use_echo = slow_in_nginx and tools.echo_module is not None
    if use_echo:
        slow_server = f"""
    server {{
        listen 127.0.0.1:{slow} backlog=4096;
        root {data};
        location = /_body {{ internal; try_files /candidate.json =404; }}
        location / {{ echo_sleep {SLOW_DELAY}; echo_location /_body; }}
    }}"""
    body = f"""
    split_clients "${{request_id}}" $fault {{
        {half} error;
        {half} drop;
        * "";
    }}
    server {{
        listen 127.0.0.1:{primary} backlog=4096;
        root {data};
        location / {{ try_files /primary.json =404; }}
    }}
    server {{
        listen 127.0.0.1:{candidate} backlog=4096;
        root {data};
        location / {{ try_files /candidate.json =404; }}
    }}
    server {{
        listen 127.0.0.1:{twin} backlog=4096;
        root {data};
        location / {{ try_files /primary.json =404; }}
    }}
    server {{
        listen 127.0.0.1:{flaky} backlog=4096;
        root {data};
        location / {{
            if ($fault = error) {{ return 500; }}
            if ($fault = drop) {{ return 444; }}
            try_files /candidate.json =404;
        }}
    }}{slow_server}
"""
    nginx = start_nginx(tools, workdir, "backends", body, workers="1", echo=use_echo)
    servers = [nginx]
    slow_kind = f"nginx echo_sleep {SLOW_DELAY:g}s"
    if not use_echo:
        slow_kind = f"asyncio server, sleep {SLOW_DELAY:g}s"
        command = [
            sys.executable, str(BENCH_DIR / "delay_server.py"), "--port", str(slow),
            "--delay", str(SLOW_DELAY), "--body", str(data / "candidate.json"),
        ]  # fmt: skip
        servers.append(_spawn("slow-candidate", command, workdir / "slow-candidate.log"))
    backends = Backends(primary, candidate, slow, flaky, twin, slow_kind, servers)
    try:
        for port, server in ((primary, nginx), (slow, servers[-1])):
            wait_for_port(port, STARTUP_TIMEOUT, server.alive)
    except BenchError:
        backends.stop()
        raise BenchError(f"backends did not start:\n{nginx.log_tail()}") from None
    return backends


def start_nginx_proxy(
    tools: Tools,
    workdir: Path,
    name: str,
    *,
    primary: int,
    candidate: int | None,
    keepalive: bool = True,
) -> tuple[Server, int]:
    """nginx in front of the primary, with ``mirror`` to the candidate when one is given.

    Upstream connections are kept alive, as shadowproxy's pools keep them, unless
    ``keepalive`` is false: then nginx opens one per request (HTTP/1.0), as the mirror
    module's documented example does. The forwarding headers shadowproxy adds are added here
    too. ``worker_processes auto``: one per core, like shadowproxy's workers.
    """
    port = free_port()
    reuse = ""
    if keepalive:
        reuse = 'proxy_http_version 1.1;\n            proxy_set_header Connection "";'
    pooled = " keepalive 128;" if keepalive else ""
    forwarding = f"""
            {reuse}
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Request-Id $request_id;"""
    mirror = mirror_location = candidate_upstream = ""
    if candidate is not None:
        candidate_upstream = f"upstream candidate {{ server 127.0.0.1:{candidate};{pooled} }}"
        mirror = "mirror /_mirror;\n            mirror_request_body on;"
        mirror_location = f"""
        location = /_mirror {{
            internal;
            proxy_pass http://candidate$request_uri;{forwarding}
            proxy_set_header X-Shadow-Request 1;
        }}"""
    body = f"""
    upstream primary {{ server 127.0.0.1:{primary};{pooled} }}
    {candidate_upstream}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            {mirror}
            proxy_pass http://primary;{forwarding}
        }}{mirror_location}
    }}
"""
    server = start_nginx(tools, workdir, name, body, workers="auto")
    try:
        wait_for_port(port, STARTUP_TIMEOUT, server.alive)
    except BenchError:
        server.stop()
        raise BenchError(f"nginx ({name}) did not start:\n{server.log_tail()}") from None
    return server, port


@dataclass
class ShadowProxy:
    server: Server
    port: int
    admin: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.server.pid

    def metrics(self) -> dict[str, float]:
        """The admin listener's counters, summed over workers, keyed ``name{labels}``."""
        _, text = http_get(f"http://{self.admin}/metrics")
        values: dict[str, float] = {}
        for line in text.decode().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[key] = float(value)
        return values

    def stop(self) -> None:
        self.server.stop(signal.SIGTERM, timeout=30.0)


def start_shadowproxy(
    workdir: Path,
    name: str,
    *,
    primary: int,
    candidate: int,
    sample_rate: float,
    workers: int,
    env: dict[str, str] | None = None,
) -> ShadowProxy:
    """``shadowproxy run --workers N`` with everything else at its defaults, logging to a file."""
    directory = workdir / name
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "discrepancies.jsonl"
    config = directory / "shadowproxy.yaml"
    config.write_text(
        "\n".join(
            [
                'listen: "127.0.0.1:0"',
                'admin: "127.0.0.1:0"',
                "primary:",
                f'  url: "http://127.0.0.1:{primary}"',
                "candidate:",
                f'  url: "http://127.0.0.1:{candidate}"',
                "mirror:",
                f"  sample_rate: {sample_rate}",
                "  shutdown_grace: 0.5",
                "log:",
                f'  path: "{log_path}"',
                "shutdown_timeout: 2",
                "",
            ]
        )
    )
    command = [
        sys.executable, "-m", "shadowproxy", "run", "--config", str(config),
        "--workers", str(workers),
    ]  # fmt: skip
    stderr_path = directory / "stderr.log"
    # Start-up is read from this file: a "listening" line left by an earlier run of the same
    # case (the next round) would name a port nobody listens on any more.
    stderr_path.unlink(missing_ok=True)
    log_path.unlink(missing_ok=True)
    server = _spawn(name, command, stderr_path, env={**os.environ, **(env or {})}, cwd=directory)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        for line in stderr_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") == "listening":
                    port = int(str(event["proxy"]).rpartition(":")[2])
                    return ShadowProxy(server, port, str(event["admin"]), log_path)
        if not server.alive():
            break
        time.sleep(0.05)
    server.stop()
    raise BenchError(f"shadowproxy did not start:\n{server.log_tail()}")


# --- load -----------------------------------------------------------------------------------

WRK_REPORT = """
done = function(summary, latency, requests)
  io.write(string.format(
    "WRK_JSON {\\"requests\\":%d,\\"duration_us\\":%d,\\"bytes\\":%d,"
    .. "\\"errors_connect\\":%d,\\"errors_read\\":%d,\\"errors_write\\":%d,"
    .. "\\"errors_status\\":%d,\\"errors_timeout\\":%d,\\"mean_us\\":%.1f,"
    .. "\\"p50_us\\":%d,\\"p90_us\\":%d,\\"p99_us\\":%d,\\"max_us\\":%d}\\n",
    summary.requests, summary.duration, summary.bytes,
    summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout, latency.mean,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""

# After each answer a connection waits a random 0.5 to 1.5 times the interval (milliseconds)
# before its next request: with C connections that is about C / interval requests per second,
# arrivals spread out rather than in lockstep, as long as answers come well within the interval.
WRK_FIXED_RATE = """
local interval_ms = 10
init = function(args)
  interval_ms = tonumber(args[1])
  math.randomseed(tonumber(tostring({}):match("0x(%x+)") or "1", 16) % 2147483647)
end
delay = function()
  return math.random(math.floor(interval_ms / 2), math.floor(interval_ms * 3 / 2))
end
"""


@dataclass
class LoadResult:
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: dict[str, int]
    wrk_cpu_s: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_wrk(
    tools: Tools,
    workdir: Path,
    url: str,
    *,
    duration: float,
    connections: int,
    threads: int,
    rate: float | None = None,
    timeout: float = 5.0,
) -> LoadResult:
    """Closed loop at full speed, or about ``rate`` requests per second."""
    script = workdir / ("wrk-fixed-rate.lua" if rate else "wrk-report.lua")
    if not script.exists():
        script.write_text((WRK_FIXED_RATE if rate else "") + WRK_REPORT)
    threads = max(1, min(threads, connections))
    command = [
        tools.wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
        f"--timeout={timeout:g}s", "-s", str(script), url,
    ]  # fmt: skip
    if rate:
        command += ["--", f"{max(1, round(connections / rate * 1000))}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=duration + 60,
        preexec_fn=_die_with_parent,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    match = re.search(r"^WRK_JSON (\{.*\})$", completed.stdout, re.MULTILINE)
    if completed.returncode != 0 or match is None:
        raise BenchError(
            f"wrk failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}"
        )
    data = json.loads(match.group(1))
    seconds = data["duration_us"] / 1e6
    return LoadResult(
        requests=data["requests"],
        duration_s=round(seconds, 3),
        rps=round(data["requests"] / seconds, 1) if seconds else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        mean_ms=round(data["mean_us"] / 1000, 3),
        max_ms=data["max_us"] / 1000,
        errors={k.removeprefix("errors_"): v for k, v in data.items() if k.startswith("errors_")},
        wrk_cpu_s=round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 3),
    )


def start_wrk(
    tools: Tools,
    workdir: Path,
    url: str,
    *,
    duration: float,
    connections: int,
    threads: int,
    rate: float,
) -> subprocess.Popen[str]:
    """``run_wrk`` at a fixed rate, in the background (for the soak)."""
    script = workdir / "wrk-fixed-rate.lua"
    script.write_text(WRK_FIXED_RATE + WRK_REPORT)
    command = [
        tools.wrk, f"-t{max(1, min(threads, connections))}", f"-c{connections}",
        f"-d{max(1, round(duration))}s", "--timeout=5s", "-s", str(script), url,
        "--", f"{max(1, round(connections / rate * 1000))}",
    ]  # fmt: skip
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_die_with_parent,
    )


def parse_wrk_output(stdout: str) -> dict[str, Any]:
    match = re.search(r"^WRK_JSON (\{.*\})$", stdout, re.MULTILINE)
    if match is None:
        raise BenchError(f"no summary in wrk's output:\n{stdout}")
    data: dict[str, Any] = json.loads(match.group(1))
    return data


@contextlib.contextmanager
def cpu_meter(groups: dict[str, list[int]]) -> Iterator[dict[str, float]]:
    """CPU seconds each group of processes used inside the block, all CPUs' busy seconds
    (``machine``) and the share of the machine that was busy (``machine_busy``)."""
    before = {name: cpu_seconds(pids) for name, pids in groups.items()}
    busy0, total0 = machine_busy()
    result: dict[str, float] = {}
    yield result
    for name, pids in groups.items():
        result[name] = round(cpu_seconds(pids) - before[name], 3)
    busy1, total1 = machine_busy()
    result["machine"] = round((busy1 - busy0) / CLOCK_TICKS, 3)
    result["machine_busy"] = round((busy1 - busy0) / max(1, total1 - total0), 3)
