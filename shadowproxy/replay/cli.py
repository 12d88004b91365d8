"""``shadowproxy replay``: captured traffic against a candidate, logged as the proxy logs it.

Exit status: 0 when the replay ran (whatever it found); with ``--verdict``, the verdict's
(0 pass, 1 fail, 2 not enough data); 2 for unusable arguments, captures that cannot be read,
a log that cannot be opened, or records lost writing it (the log is incomplete: no verdict
is given); 130 when interrupted (Ctrl-C: nothing more is sent, what was replayed so far is
logged and judged all the same; a second Ctrl-C cancels the requests under way).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from shadowproxy import argtypes
from shadowproxy.config import (
    Backend,
    CandidateBackend,
    Config,
    ConfigError,
    LogConfig,
    parse_config,
    read_config_text,
    read_yaml,
)
from shadowproxy.har import CaptureInputError, count_entries, read_entries
from shadowproxy.noise import NoiseModel
from shadowproxy.record import LogWriter, QueryRedactor
from shadowproxy.redact import Redactor
from shadowproxy.replay.engine import Pacer, Replayer, ReplayStats, Targets
from shadowproxy.replay.progress import ProgressDisplay
from shadowproxy.report.aggregate import Aggregator
from shadowproxy.report.cli import NO_BARS, add_bar_options, bars_of, silence, tell
from shadowproxy.report.read import STDIN, ReportInputError, expand_sources
from shadowproxy.report.summary import summarise
from shadowproxy.report.verdict import evaluate, render_text
from shadowproxy.report.verdict import to_json as verdict_json

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEFAULT_CONCURRENCY = 16
DEFAULT_TIMEOUT = 5.0
PLACEHOLDER_URLS = {"primary": "http://primary.invalid", "candidate": "http://candidate.invalid"}
PROG = "shadowproxy replay"


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c in text for c in "\r\n\0"):
        raise argparse.ArgumentTypeError(f'"{text}": must be "Name: value"')
    return name.strip(), value.strip()


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``replay`` subcommand."""
    replay = subparsers.add_parser(
        "replay",
        help="replay captured traffic against a candidate and log the differences",
        description="Send captured requests to a candidate and compare its answers with the "
        "recorded primary responses (or, with --primary, with a live primary's), writing the "
        "discrepancy log that report and verdict read. Unsafe methods are replayed only with "
        "--allow-unsafe; every request carries X-Shadow-Request: 1.",
    )
    replay.add_argument(
        "captures",
        nargs="+",
        metavar="CAPTURE",
        help="capture files (JSON lines of HAR entries, .gz/.zst), HAR documents, globs, "
        "or - for stdin",
    )
    replay.add_argument("--candidate", required=True, metavar="URL", help="the build under test")
    replay.add_argument(
        "--primary",
        metavar="URL",
        help="send each request to this live primary too and compare with its answer instead "
        "of the recorded one",
    )
    replay.add_argument(
        "--secondary",
        metavar="URL",
        help="with --primary: a second instance of the primary's version; where it differs "
        "from the primary is noise (see the config's noise section)",
    )
    pace = replay.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=argtypes.positive, metavar="N", help="requests per second")
    pace.add_argument(
        "--speed",
        type=argtypes.positive,
        metavar="X",
        help="follow the recorded timing, X times as fast (1: as recorded, 10: ten times faster)",
    )
    replay.add_argument(
        "--concurrency",
        type=argtypes.count,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"requests in flight at most (default {DEFAULT_CONCURRENCY})",
    )
    replay.add_argument(
        "--timeout",
        type=argtypes.positive,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"longest wait for each backend's whole answer (default {DEFAULT_TIMEOUT:g})",
    )
    replay.add_argument(
        "--allow-unsafe",
        action="store_true",
        help="replay POST, PUT, PATCH, DELETE, ... too (the backends must tolerate them)",
    )
    replay.add_argument(
        "--header",
        action="append",
        type=_header,
        default=[],
        metavar="'NAME: VALUE'",
        help="set this header on every replayed request, replacing a recorded one (test "
        "credentials: captured secrets are redacted and not sent); repeatable",
    )
    replay.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="a config file whose diff rules (diff, mirror.rules' diff), log.redact, "
        "log.redact_query and noise settings apply; a file with only those sections will do",
    )
    replay.add_argument(
        "--log", default="-", metavar="PATH", help="the discrepancy log to append to (default -)"
    )
    replay.add_argument(
        "--verdict",
        action="store_true",
        help="judge the result against the bars below, as shadowproxy verdict does; the exit "
        "status is the verdict's",
    )
    add_bar_options(replay)
    replay.add_argument("--json", action="store_true", help="print the verdict as JSON")
    replay.add_argument(
        "--no-progress", action="store_true", help="no progress display on standard error"
    )
    replay.add_argument(
        "--progress-interval",
        type=argtypes.positive,
        default=10.0,
        metavar="SECONDS",
        help="seconds between progress lines when standard error is not a terminal",
    )
    replay.set_defaults(func=run_replay)


@dataclass(frozen=True, slots=True)
class Setup:
    config: Config
    targets: Targets


def _error(message: str) -> int:
    tell(f"{PROG}: error: {message}")
    return EXIT_USAGE


def load_rules(path: str | None) -> Config:
    """The config whose comparison rules, redaction and noise settings apply. A file without
    primary and candidate (only a diff section, say) is completed with placeholders."""
    if path is None:
        return parse_config(
            {name: {"url": url} for name, url in PLACEHOLDER_URLS.items()}, "defaults"
        )
    data = read_yaml(read_config_text(path), path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    for name, url in PLACEHOLDER_URLS.items():
        data.setdefault(name, {"url": url})
    return parse_config(data, path)


def _setup(args: argparse.Namespace) -> Setup | int:
    if args.secondary and not args.primary:
        return _error("--secondary needs --primary: noise is learned from live answers")
    bars = bars_of(args)
    if args.verdict and not bars.any:
        return _error(f"--verdict: {NO_BARS}")
    if bars.any and not args.verdict:
        return _error("bars (--max-...) are judged only with --verdict")
    try:
        config = load_rules(args.config)
    except ConfigError as error:
        return _error(f"invalid config {args.config}:\n{error}")
    for warning in config.warnings():
        tell(f"{PROG}: warning: {warning}")
    try:
        expand_sources(args.captures)
    except ReportInputError as error:
        return _error(str(error))
    backends: dict[str, Backend | None] = {}
    for name in ("candidate", "primary", "secondary"):
        url = getattr(args, name)
        if url is None:
            backends[name] = None
            continue
        try:
            backends[name] = CandidateBackend(
                url=url, timeout=args.timeout, max_connections=args.concurrency
            )
        except ValueError as error:
            reason = str(error).splitlines()[-1].strip()
            return _error(f"--{name} {url}: {reason}")
    candidate = backends["candidate"]
    assert candidate is not None
    return Setup(
        config=config,
        targets=Targets(
            candidate=candidate, primary=backends["primary"], secondary=backends["secondary"]
        ),
    )


def run_replay(args: argparse.Namespace) -> int:
    setup = _setup(args)
    if isinstance(setup, int):
        return setup
    _install_uvloop()
    return asyncio.run(_replay(args, setup))


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()


async def _replay(args: argparse.Namespace, setup: Setup) -> int:
    config = setup.config
    show_progress = not args.no_progress
    terminal = show_progress and sys.stderr.isatty()
    total = count_entries(args.captures) if show_progress and STDIN not in args.captures else None
    stats = ReplayStats(total=total)
    # Lossless: a replay has no request path to protect, so a slow reader of the log is
    # waited for. Opened here, not by start(), which would count records lost and go on.
    writer = LogWriter(LogConfig(path=args.log), lossless=True)
    log_name = "standard output" if args.log == "-" else args.log
    try:
        writer.open()
    except (OSError, ValueError) as error:  # ValueError: a NUL in the path
        reason = getattr(error, "strerror", None) or str(error)
        return _error(f"{log_name}: cannot open the log: {reason}")
    writer.start()
    aggregator = Aggregator() if args.verdict else None

    def on_record(record: dict[str, object]) -> None:
        writer.write(record)
        if aggregator is not None:
            aggregator.add(record)

    replayer = Replayer(
        setup.targets,
        diff=config.effective_diff(),
        on_record=on_record,
        concurrency=args.concurrency,
        pacer=Pacer(rate=args.rate, speed=args.speed),
        allow_unsafe=args.allow_unsafe,
        headers=args.header,
        redactor=Redactor(config.log.redact),
        noise=NoiseModel.from_config(config.noise) if setup.targets.secondary else None,
        stats=stats,
        output_room=writer.room,
        query=QueryRedactor(config.log.redact_query),
    )

    def interrupt() -> None:
        if replayer.stopped:
            writer.give_up()  # a second Ctrl-C: a log reader that is behind is not waited for
        else:
            print(
                f"{PROG}: interrupted: sending nothing more; waiting for {replayer.in_flight} "
                "request(s) under way (Ctrl-C again to cancel them)",
                file=sys.stderr,
                flush=True,
            )
        replayer.stop()

    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, interrupt)
    progress = ProgressDisplay(stats, terminal=terminal, interval=args.progress_interval)
    if show_progress:
        progress.start()
    failed: str | None = None
    try:
        await replayer.run(read_entries(args.captures, stats.read))
    except CaptureInputError as error:
        failed = str(error)
    finally:
        await progress.stop()
        await writer.close()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
    for warning in stats.read.warnings():
        tell(f"{PROG}: warning: {warning}")
    tell(f"{PROG}: {summary_line(stats, writer)}")
    if failed is not None:
        return _error(failed)
    code = EXIT_OK
    if writer.lost:
        unjudged = "; no verdict is given" if aggregator is not None else ""
        code = _error(f"{log_name}: the log is incomplete{unjudged}")
    elif aggregator is not None:
        code = _verdict(args, aggregator)
    if replayer.stopped:
        tell(f"{PROG}: interrupted")
        return EXIT_INTERRUPTED
    return code


def _verdict(args: argparse.Namespace, aggregator: Aggregator) -> int:
    summary = summarise(aggregator, sources=list(args.captures))
    verdict = evaluate(summary, bars_of(args))
    # The log may be on stdout; the verdict must not end up inside it.
    out = sys.stderr if args.log == "-" else sys.stdout
    try:
        out.write(verdict_json(verdict).decode() + "\n" if args.json else render_text(verdict))
        out.flush()
    except BrokenPipeError:
        # Nobody reads the verdict (``| true``): it stands all the same, and a pipeline gating
        # on the status must not read a failure as a pass.
        silence(out)
    return verdict.exit_code


def summary_line(stats: ReplayStats, writer: LogWriter | None = None) -> str:
    rate = stats.completed / stats.elapsed if stats.elapsed > 0 else 0.0
    text = (
        f"{stats.completed:,} compared in {stats.elapsed:.1f} s ({rate:,.0f} req/s): "
        f"{stats.matched:,} match, {stats.mismatched:,} mismatch, "
        f"{stats.errors:,} candidate error(s)"
    )
    skipped = sum(stats.skipped.values())
    if skipped:
        reasons = "; ".join(f"{reason}: {n:,}" for reason, n in stats.skipped.most_common())
        text += f"; {skipped:,} not replayed ({reasons})"
    if writer is not None and writer.lost:
        reasons = "; ".join(f"{reason}: {n:,}" for reason, n in writer.lost_reasons.most_common())
        text += f"; {writer.lost:,} records lost writing the log ({reasons})"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m shadowproxy.replay.cli``, for tests and benchmarks."""
    parser = argparse.ArgumentParser(prog="shadowproxy")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
