"""The ``report`` and ``verdict`` subcommands; the main CLI adds them with ``register``.

Exit codes: ``report`` 0, or 2 when a log cannot be read; ``verdict`` 0 pass, 1 fail, 2 not
enough data or a log that cannot be read. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TextIO

from rich.console import Console

from shadowproxy import argtypes
from shadowproxy.report.aggregate import Aggregator
from shadowproxy.report.filters import RecordFilter
from shadowproxy.report.html import render_html
from shadowproxy.report.jsonout import to_json
from shadowproxy.report.read import TRUNCATED, ReportInputError, read_logs
from shadowproxy.report.summary import Summary, summarise
from shadowproxy.report.terminal import DEFAULT_TOP_PATHS, render_terminal
from shadowproxy.report.timestamps import parse_when
from shadowproxy.report.verdict import EXIT_INSUFFICIENT, Bars, evaluate, render_text
from shadowproxy.report.verdict import to_json as verdict_json

PIPE_WIDTH = 160
"""Columns for tables when stdout is not a terminal (rich would assume 80)."""

LOG_HELP = "discrepancy logs: files, globs, .gz/.zst files, or - for stdin"


def _when(text: str) -> float:
    try:
        return parse_when(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_input_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("logs", nargs="+", metavar="LOG", help=LOG_HELP)
    parser.add_argument(
        "--since",
        type=_when,
        metavar="TIME",
        help="only exchanges at or after TIME: ISO 8601 or a duration ago (30m, 1h, 2d)",
    )
    parser.add_argument(
        "--until", type=_when, metavar="TIME", help="only exchanges before TIME (as --since)"
    )
    parser.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only these endpoints: an exact name ('GET /users/{id}'), a glob ('GET /users/*') "
        "or a config endpoint pattern ('/api/**'); repeatable",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def add_bar_options(parser: argparse.ArgumentParser) -> None:
    """The bars of ``verdict``; ``shadowproxy replay --verdict`` takes the same ones."""
    parser.add_argument(
        "--max-mismatch-rate",
        type=argtypes.fraction,
        metavar="RATE",
        help="highest share of mismatching exchanges, e.g. 0.001",
    )
    parser.add_argument(
        "--max-error-rate",
        type=argtypes.fraction,
        metavar="RATE",
        help="highest share of exchanges the candidate failed (timeout, refused, ...)",
    )
    parser.add_argument(
        "--max-p99-latency-ratio",
        type=argtypes.positive,
        metavar="RATIO",
        help="highest candidate p99 latency over primary p99 latency, e.g. 1.2",
    )
    parser.add_argument(
        "--min-samples",
        type=argtypes.count,
        default=1,
        metavar="N",
        help="exchanges needed overall (else exit 2) and per endpoint (else it is skipped)",
    )


def bars_of(args: argparse.Namespace) -> Bars:
    """The bars given by `add_bar_options`' flags."""
    return Bars(
        max_mismatch_rate=args.max_mismatch_rate,
        max_error_rate=args.max_error_rate,
        max_p99_latency_ratio=args.max_p99_latency_ratio,
        min_samples=args.min_samples,
    )


NO_BARS = "give at least one bar: --max-mismatch-rate, --max-error-rate or --max-p99-latency-ratio"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``report`` and ``verdict`` subcommands."""
    report = subparsers.add_parser(
        "report",
        help="summarise discrepancy logs per endpoint",
        description="Summarise discrepancy logs per endpoint, worst first.",
    )
    _add_input_options(report)
    report.add_argument(
        "--html",
        metavar="FILE",
        help="also write a self-contained HTML report (- for stdout instead of the table; "
        "not with --json)",
    )
    report.add_argument(
        "--top-paths",
        type=argtypes.count,
        default=DEFAULT_TOP_PATHS,
        metavar="N",
        help=f"differing paths shown per endpoint in the table (default {DEFAULT_TOP_PATHS})",
    )
    report.set_defaults(func=run_report)

    verdict = subparsers.add_parser(
        "verdict",
        help="pass or fail the candidate against bars (exit 0 pass, 1 fail, 2 no data)",
        description="Judge the candidate against bars per endpoint and overall. Exit status: "
        "0 pass, 1 fail, 2 not enough data or unreadable input.",
    )
    _add_input_options(verdict)
    add_bar_options(verdict)
    verdict.set_defaults(func=run_verdict)


def _summary(args: argparse.Namespace, command: str) -> Summary | None:
    """Read the logs named in ``args``; None (after a message) when they cannot be read."""
    record_filter = RecordFilter(args.since, args.until, tuple(args.endpoint))
    try:
        aggregator = read_logs(args.logs, record_filter if record_filter.active else None)
    except ReportInputError as error:
        tell(f"shadowproxy {command}: error: {error}")
        return None
    _warn_skipped(aggregator, command)
    return summarise(
        aggregator,
        sources=["stdin" if name == "-" else name for name in args.logs],
        since=args.since,
        until=args.until,
        endpoint_patterns=args.endpoint,
    )


def _warn_skipped(aggregator: Aggregator, command: str) -> None:
    counts = aggregator.counts
    for name in counts.truncated:
        tell(f"shadowproxy {command}: warning: {TRUNCATED.format(name=name)}")
    if counts.corrupted:
        tell(
            f"shadowproxy {command}: warning: skipped {counts.corrupted:,} corrupted "
            f"line(s) that are not JSON objects (first: {counts.first_corrupted})"
        )
    if counts.invalid:
        tell(
            f"shadowproxy {command}: warning: skipped {counts.invalid:,} exchange record(s) "
            "missing fields a report needs"
        )


def silence(stream: TextIO) -> None:
    """Point ``stream``'s descriptor at /dev/null once its reader has gone away, so that
    Python's flush at exit does not fail again (and turn the exit status into 120)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)


def tell(message: str) -> None:
    """One line for the operator on stderr. When nobody reads stderr any more the line is
    dropped: the exit status still speaks, and must not become the 0 of a broken pipe."""
    try:
        print(message, file=sys.stderr, flush=True)
    except BrokenPipeError:
        silence(sys.stderr)


def _write(out: IO[bytes], payload: bytes) -> None:
    out.write(payload)
    out.flush()


def run_report(args: argparse.Namespace) -> int:
    if args.html == "-" and args.json:
        # One stream cannot carry both documents; the second was silently left out.
        tell(
            "shadowproxy report: error: --html - and --json both write to stdout: write the "
            "HTML to a file, or leave one out"
        )
        return 2
    summary = _summary(args, "report")
    if summary is None:
        return 2
    if args.html:
        page = render_html(summary).encode("utf-8")
        if args.html == "-":
            _write(sys.stdout.buffer, page)
            return 0
        try:
            Path(args.html).write_bytes(page)
        except OSError as error:
            tell(f"shadowproxy report: error: {args.html}: {error.strerror}")
            return 2
        tell(f"shadowproxy report: wrote {args.html}")
    if args.json:
        _write(sys.stdout.buffer, to_json(summary, indent=True) + b"\n")
    else:
        console = Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)
        render_terminal(summary, console, top_paths=args.top_paths)
    return 0


def run_verdict(args: argparse.Namespace) -> int:
    bars = bars_of(args)
    if not bars.any:
        tell(f"shadowproxy verdict: error: {NO_BARS}")
        return EXIT_INSUFFICIENT
    summary = _summary(args, "verdict")
    if summary is None:
        return EXIT_INSUFFICIENT
    verdict = evaluate(summary, bars)
    try:
        if args.json:
            _write(sys.stdout.buffer, verdict_json(verdict) + b"\n")
        else:
            sys.stdout.write(render_text(verdict))
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``| head``, ``| true``): the verdict stands all the same, and
        # a pipeline gating on the status must not read a failure as a pass.
        silence(sys.stdout)
    return verdict.exit_code


def build_parser(prog: str = "shadowproxy") -> argparse.ArgumentParser:
    """A parser with only these subcommands, for ``python -m shadowproxy.report`` and tests."""
    parser = argparse.ArgumentParser(prog=prog)
    subparsers = parser.add_subparsers(dest="command", required=True)
    register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; argparse's own errors exit 2."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except BrokenPipeError:
        # The reader (head, less) went away: nothing left to say, and not a failure of ours.
        sys.stderr.close()
        return 0
    return code
