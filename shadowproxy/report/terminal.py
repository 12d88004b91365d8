"""The report as terminal tables (rich).

Every value that comes from the log is passed as ``Text`` (never markup) with control
characters made visible, since it is untrusted traffic and could otherwise restyle or
rewrite the operator's terminal.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from shadowproxy.report.summary import BackendLatency, EndpointReport, StatusPair, Summary

DEFAULT_TOP_PATHS = 10
EXAMPLE_VALUE_CHARS = 40
# C0 and C1 controls, and the bidirectional overrides and isolates, which reorder what
# follows them on terminals and CI log viewers that apply bidi (a "Trojan Source" name).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """Untrusted text with its control characters shown as escapes (``\\x1b``, ``\\u202e``)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def safe(text: str) -> Text:
    """Untrusted text for display: no markup, control characters shown as escapes."""
    return Text(printable(text))


def percent(rate: float | None) -> str:
    if rate is None:
        return "-"
    if rate == 0 or rate == 1:
        return f"{rate * 100:.0f}%"
    if 0.001 <= rate <= 0.999:
        return f"{rate * 100:.2f}%"
    if rate > 0.999:  # keep 99.991% from reading as 100%, and 99.9999% too: only 1 is 100%
        return f"{min(rate * 100, 99.999):.3f}%"
    return f"{rate * 100:.3g}%"


def millis(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def value_text(value: Any) -> str:
    text = orjson.dumps(value, default=str).decode()
    if len(text) > EXAMPLE_VALUE_CHARS:
        text = text[: EXAMPLE_VALUE_CHARS - 1] + "…"
    return text


def status_pair_text(pair: StatusPair) -> str:
    return f"{pair.primary} -> {pair.candidate}: {pair.count:,}"


def _pair(primary: BackendLatency, candidate: BackendLatency, attribute: str) -> str:
    return f"{millis(getattr(primary, attribute))} / {millis(getattr(candidate, attribute))}"


def _rate_style(report: EndpointReport) -> str:
    if not report.compared:
        return "dim"
    bad = report.bad / report.compared
    return "green" if bad == 0 else "yellow" if bad < 0.01 else "red"


COLUMNS = (
    "compared", "match\nrate", "mis-\nmatches", "cand.\nerrors",
    "p50 ms\nprim/cand", "p95 ms\nprim/cand", "p99 ms\nprim/cand", "p99\nratio",
)  # fmt: skip
NARROWER = ((), (4, 5), (4, 5, 6))
"""Columns left out, in turn, until the table fits the terminal: p50 and p95 first."""


def endpoints_table(summary: Summary, width: int | None = None) -> Table:
    """The endpoints, one row each; figures are never cut. On a terminal narrower than the
    table, the endpoint names fold, then p50 and p95 (and then p99 itself) are left out."""
    rows = [*summary.endpoints, summary.overall]
    cells = [
        [
            f"{report.compared:,}",
            percent(report.match_rate),
            f"{report.mismatches:,}",
            f"{report.candidate_errors:,}",
            _pair(report.latency_ms.primary, report.latency_ms.candidate, "p50"),
            _pair(report.latency_ms.primary, report.latency_ms.candidate, "p95"),
            _pair(report.latency_ms.primary, report.latency_ms.candidate, "p99"),
            ratio(report.latency_ms.p99_ratio),
        ]
        for report in rows
    ]
    widest = [
        max(*(len(row[i]) for row in cells), *(len(line) for line in COLUMNS[i].split("\n")))
        for i in range(len(COLUMNS))
    ]
    for left_out in NARROWER:
        kept = [i for i in range(len(COLUMNS)) if i not in left_out]
        # endpoint (at least "overall") and each figure, a space either side of each, an edge
        needed = len("overall") + 2 + sum(widest[i] + 2 for i in kept) + 2
        if width is None or needed <= width:
            break
    table = Table(title="Endpoints, worst first", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("endpoint", overflow="fold", min_width=len("overall"))
    for i in kept:
        table.add_column(COLUMNS[i], justify="right", no_wrap=True, min_width=widest[i])
    for report, row in zip(rows, cells, strict=True):
        shown: list[RenderableType] = [
            Text(row[i], style=_rate_style(report)) if i == 1 else row[i] for i in kept
        ]
        is_overall = report is summary.overall
        table.add_row(
            Text("overall", style="bold") if is_overall else safe(report.endpoint),
            *shown,
            end_section=report is summary.endpoints[-1] if summary.endpoints else False,
        )
    return table


def endpoint_details(report: EndpointReport, top_paths: int = DEFAULT_TOP_PATHS) -> Group:
    """Differing paths, status pairs and error kinds of one endpoint."""
    title = safe(report.endpoint)
    title.stylize("bold")
    parts: list[RenderableType] = [
        Text.assemble(
            "\n",
            title,
            f"  {report.mismatches:,} mismatches, {report.candidate_errors:,} candidate errors "
            f"of {report.compared:,}",
        )
    ]
    if report.paths:
        table = Table(box=box.SIMPLE, pad_edge=False)
        table.add_column("where")
        table.add_column("path", overflow="fold")
        table.add_column("exchanges", justify="right")
        table.add_column("kinds")
        table.add_column("primary e.g.", overflow="fold")
        table.add_column("candidate e.g.", overflow="fold")
        for path in report.paths[:top_paths]:
            example = path.example or {}
            table.add_row(
                safe(path.where),
                safe(path.path or "-"),
                f"{path.exchanges:,}",
                safe(", ".join(f"{k} {n:,}" for k, n in path.kinds.items())),
                safe(value_text(example.get("primary"))),
                safe(value_text(example.get("candidate"))),
            )
        hidden = len(report.paths) - top_paths
        if hidden > 0 or report.paths_other_exchanges:
            table.caption = (
                f"{max(hidden, 0)} more paths; untracked paths in "
                f"{report.paths_other_exchanges:,} exchanges"
            )
        parts.append(table)
    differing = [p for p in report.status_pairs if p.primary != p.candidate]
    if differing:
        parts.append(safe("status pairs: " + ", ".join(status_pair_text(p) for p in differing)))
    if report.candidate_error_kinds:
        kinds = ", ".join(f"{k} {n:,}" for k, n in report.candidate_error_kinds.items())
        parts.append(safe(f"candidate errors: {kinds}"))
    return Group(*parts)


def header(summary: Summary) -> Text:
    window = summary.window
    text = Text.assemble(("shadowproxy report", "bold"), f"  {summary.input.exchanges:,} exchanges")
    if window.first and window.last:
        text.append(f" from {window.first} to {window.last}")
    sources = summary.input.sources
    if sources:
        text.append("\n")
        text.append(safe("logs: " + ", ".join(sources)))
    skipped = [
        f"{n:,} {what}"
        for n, what in (
            (summary.input.corrupted, "corrupted lines"),
            (summary.input.invalid, "invalid records"),
            (summary.input.filtered_out, "filtered out"),
        )
        if n
    ]
    if skipped:
        text.append("\nskipped: " + ", ".join(skipped), style="yellow")
    return text


def render_terminal(
    summary: Summary, console: Console, *, top_paths: int = DEFAULT_TOP_PATHS
) -> None:
    """Print the report: a header, the endpoints table, then details of failing endpoints."""
    console.print(header(summary))
    if not summary.endpoints:
        console.print("no exchanges to report", style="yellow")
        return
    console.print(endpoints_table(summary, console.width))
    for report in summary.endpoints:
        if report.bad:
            console.print(endpoint_details(report, top_paths))
