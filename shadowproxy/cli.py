"""The ``shadowproxy`` command: run, check-config, and the commands that read the log."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from shadowproxy import __version__, argtypes, channel, oplog, signals
from shadowproxy.config import (
    ENV_CONFIG,
    Backend,
    Config,
    ConfigError,
    parse_config_text,
    read_config_text,
)

EXIT_OK = 0
EXIT_USAGE = 2
PROMETHEUS_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


def _config_path(args: argparse.Namespace) -> str | None:
    path: str | None = args.config or os.environ.get(ENV_CONFIG)
    return path


def _load(path: str | None, fd: int | None = None) -> tuple[Config, str] | None:
    """The config and the text it was read from: the file's, or the first message on the
    config channel ``fd`` (a worker gets its supervisor's text; ``path`` names it in
    messages)."""
    if path is None:
        print(f"shadowproxy: no config: pass --config FILE or set {ENV_CONFIG}", file=sys.stderr)
        return None
    try:
        if fd is None:
            text = read_config_text(path)
        else:
            given = channel.read_frame(fd)
            if given is None:
                raise ConfigError(f"{path}: the supervisor closed the config channel")
            text = given
        return parse_config_text(text, path), text
    except ConfigError as error:
        print(f"shadowproxy: invalid config {path}:\n{error}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    path = _config_path(args)
    loaded = _load(path, args.config_fd)
    if loaded is None or path is None:
        return EXIT_USAGE
    config, text = loaded
    unreadable = config.unreadable_files()
    if unreadable:
        print("shadowproxy: cannot start:\n" + "\n".join(unreadable), file=sys.stderr)
        return 1
    workers = args.workers if args.workers is not None else available_cores()
    _hold_standard_streams()
    # Before any thread starts (the operational log's writer): threads inherit the hold, so
    # a SIGHUP during start-up waits for the main thread's handler (see signals.py).
    signals.hold(signal.SIGHUP)
    oplog.configure()
    try:
        if workers > 1 and args.worker_index is None:
            # The supervisor stays on asyncio's own loop: its subprocesses keep the signal
            # mask they are started with (see workers.py), which libuv's spawn clears.
            return _run_supervisor(config, text, Path(path), workers)
        _install_uvloop()
        from shadowproxy.server import serve

        asyncio.run(
            serve(
                config,
                Path(path),
                worker=args.worker_index,
                workers=workers,
                listen_port=args.listen_port,
                tls_port=args.listen_tls_port,
                ready_fd=args.ready_fd,
                config_channel=args.config_fd,
                demand_file=args.demand_file,
            )
        )
    except OSError as error:  # the port is taken, the log file cannot be opened, ...
        print(f"shadowproxy: cannot start: {error}", file=sys.stderr)
        return 1
    return EXIT_OK


def _hold_standard_streams() -> None:
    """Put ``/dev/null`` on standard input, output or error where the process started with
    it closed (``>&-``); ``sys.stdout`` stays None, so the log still says it is closed.

    Otherwise the first file or socket opened takes that number: uvloop aborts the process
    when it closes one of those numbers, and a worker would inherit it as its stream.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            held = os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one
            os.set_inheritable(held, True)


def available_cores() -> int:
    """Cores this process may use: CPU affinity, capped by a cgroup v2 CPU quota.

    In a container ``os.cpu_count()`` counts the node's cores, which would start far more
    workers than the container's CPU share can run.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def _run_supervisor(config: Config, text: str, path: Path, workers: int) -> int:
    # Worker processes share metrics through files; prometheus-client reads this variable
    # when it is first imported, so it is set before anything imports it.
    metrics_dir = Path(tempfile.mkdtemp(prefix="shadowproxy-metrics-"))
    os.environ[PROMETHEUS_MULTIPROC_DIR] = str(metrics_dir)
    from shadowproxy.workers import WorkerStartError, run_supervisor

    try:
        run_supervisor(config, text, path, workers, metrics_dir)
    except WorkerStartError as error:
        print(f"shadowproxy: cannot start: {error}", file=sys.stderr)
        return 1
    return EXIT_OK


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()


def cmd_check_config(args: argparse.Namespace) -> int:
    path = args.file or _config_path(args)
    loaded = _load(path)
    if loaded is None:
        return EXIT_USAGE
    config, _ = loaded
    problems = config.unreadable_files() or _tls_problems(config)
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    if problems:
        return EXIT_USAGE
    for warning in config.warnings():
        print(f"{path}: warning: {warning}", file=sys.stderr)
    print(f"{path}: ok (digest {config.digest()})")
    return EXIT_OK


def _tls_problems(config: Config) -> list[str]:
    """What start-up would refuse in the certificates and keys the config names: a file
    that is not PEM, a key that does not match its certificate."""
    from shadowproxy.server import listener_tls_context
    from shadowproxy.upstream import tls_context

    problems = []
    if config.listen_tls is not None:
        try:
            listener_tls_context(config.listen_tls)
        except OSError as error:
            problems.append(str(error))
    for name in ("primary", "candidate", "secondary"):
        backend: Backend | None = getattr(config, name)
        if backend is not None:
            try:
                tls_context(backend, name)
            except OSError as error:
                problems.append(str(error))
    return problems


HEALTHCHECK_TIMEOUT = 4.0
# A listener on every interface is reached through loopback from inside the container.
_REACHED_AS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def cmd_healthcheck(args: argparse.Namespace) -> int:
    """GET /healthz (or /readyz) on the admin listener the config names: the container's
    health check, with the config's own parser and no proxy variables in the way."""
    import http.client

    path = _config_path(args)
    loaded = _load(path)
    if loaded is None:
        return EXIT_USAGE
    admin = loaded[0].admin
    host = _REACHED_AS.get(admin.host, admin.host)
    target = "/readyz" if args.ready else "/healthz"
    try:
        connection = http.client.HTTPConnection(host, admin.port, timeout=HEALTHCHECK_TIMEOUT)
        connection.request("GET", target)
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as error:
        print(f"shadowproxy: {target} on {admin}: {error}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"shadowproxy: {target} on {admin}: HTTP {status}", file=sys.stderr)
        return 1
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shadowproxy",
        description="Dark-launch proxy: serve the primary, mirror to a candidate, log differences.",
    )
    parser.add_argument("--version", action="version", version=f"shadowproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the proxy")
    run.add_argument("--config", "-c", help=f"config file (default: ${ENV_CONFIG})")
    run.add_argument(
        "--workers", "-w", type=argtypes.count, default=None,
        help="worker processes sharing the port (default: one per core)",
    )  # fmt: skip
    # Set by the supervisor for its workers; not for people.
    run.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--listen-port", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--listen-tls-port", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--config-fd", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--demand-file", type=Path, default=None, help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)

    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file", nargs="?", help=f"config file (default: ${ENV_CONFIG})")
    check.set_defaults(func=cmd_check_config, config=None)

    health = commands.add_parser(
        "healthcheck", help="exit 0 when the running proxy's admin listener says it is healthy"
    )
    health.add_argument("--config", "-c", help=f"config file (default: ${ENV_CONFIG})")
    health.add_argument(
        "--ready", action="store_true", help="ask /readyz (the primary reachable) instead"
    )
    health.set_defaults(func=cmd_healthcheck)

    _register_optional(commands)
    return parser


def _register_optional(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Commands that live in their own packages register themselves here."""
    from shadowproxy.capture import register as register_capture
    from shadowproxy.replay.cli import register as register_replay
    from shadowproxy.report.cli import register as register_report
    from shadowproxy.suggest import register as register_suggest

    register_report(commands)
    register_suggest(commands)
    register_capture(commands)
    register_replay(commands)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``| head``); that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return code
