"""A report's content as plain, immutable values: what every output format renders.

``summarise(aggregator)`` is cheap (a walk over the bounded statistics), so a live view can
call it on every request. The field names are the JSON schema documented in ``jsonout``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from shadowproxy.report.aggregate import (
    CANDIDATE_ERROR,
    EXAMPLES_PER_OUTCOME,
    MAX_ENDPOINTS,
    MAX_PATHS,
    MISMATCH,
    Aggregator,
    EndpointStats,
    PathTable,
)
from shadowproxy.report.histogram import (
    DISPLAY_BOUNDS_MS,
    RELATIVE_ERROR,
    LatencyHistogram,
)
from shadowproxy.report.timeseries import MAX_BUCKETS
from shadowproxy.report.timestamps import FIRST_EPOCH, format_ts

SCHEMA = "shadowproxy.report/1"
QUANTILES = (0.5, 0.95, 0.99)
# Endpoints summarised between two turns of the event loop (`summarise_stepwise`).
SUMMARY_STEP = 20


@dataclass(frozen=True, slots=True)
class BackendLatency:
    count: int
    mean: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None


@dataclass(frozen=True, slots=True)
class LatencyReport:
    primary: BackendLatency
    candidate: BackendLatency
    secondary: BackendLatency | None
    p50_ratio: float | None
    """Candidate over primary; None when either side has no latency."""
    p95_ratio: float | None
    p99_ratio: float | None
    histogram: dict[str, list[int]]
    """Counts per bin of ``Summary.latency_bins_ms``, keyed by backend."""


@dataclass(frozen=True, slots=True)
class StatusPair:
    primary: int | str
    candidate: int | str
    """A status code, or the failure kind when no response came (``timeout``)."""
    count: int


@dataclass(frozen=True, slots=True)
class PathReport:
    where: str
    path: str
    exchanges: int
    occurrences: int
    kinds: dict[str, int]
    example: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class EndpointReport:
    endpoint: str
    compared: int
    matches: int
    mismatches: int
    candidate_errors: int
    match_rate: float | None
    mismatch_rate: float | None
    error_rate: float | None
    difference_count: int
    candidate_error_kinds: dict[str, int]
    status_pairs: list[StatusPair]
    status_pairs_other: int
    paths: list[PathReport]
    paths_other_exchanges: int
    paths_other_occurrences: int
    noise_paths: list[PathReport]
    latency_ms: LatencyReport
    secondary_errors: int
    examples: list[dict[str, Any]]

    @property
    def bad(self) -> int:
        return self.mismatches + self.candidate_errors


@dataclass(frozen=True, slots=True)
class InputReport:
    sources: list[str]
    lines: int
    exchanges: int
    corrupted: int
    invalid: int
    other_events: int
    filtered_out: int


@dataclass(frozen=True, slots=True)
class Window:
    first: str | None
    last: str | None
    since: str | None
    until: str | None
    endpoints: list[str]


@dataclass(frozen=True, slots=True)
class TimeBucketReport:
    start: str
    compared: int
    mismatches: int
    candidate_errors: int


@dataclass(frozen=True, slots=True)
class TimeSeriesReport:
    bucket_seconds: int
    buckets: list[TimeBucketReport]


@dataclass(frozen=True, slots=True)
class Summary:
    generated_at: str
    window: Window
    input: InputReport
    overall: EndpointReport
    endpoints: list[EndpointReport]
    """Worst first: highest share of mismatches plus errors, then most compared."""
    timeseries: TimeSeriesReport
    latency_bins_ms: list[float]
    limits: dict[str, float]
    schema: str = field(default=SCHEMA)


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _ratio(candidate: float | None, primary: float | None) -> float | None:
    if candidate is None or primary is None or primary <= 0:
        return None
    return candidate / primary


def _backend(histogram: LatencyHistogram) -> BackendLatency:
    p50, p95, p99 = histogram.quantiles(QUANTILES)
    return BackendLatency(
        count=histogram.count,
        mean=histogram.mean,
        p50=p50,
        p95=p95,
        p99=p99,
        max=histogram.max if histogram.count else None,
    )


def _latency(stats: EndpointStats) -> LatencyReport:
    primary, candidate = _backend(stats.primary), _backend(stats.candidate)
    histogram = {
        "primary": stats.primary.display_bins(),
        "candidate": stats.candidate.display_bins(),
    }
    secondary = None
    if stats.secondary is not None:
        secondary = _backend(stats.secondary)
        histogram["secondary"] = stats.secondary.display_bins()
    return LatencyReport(
        primary=primary,
        candidate=candidate,
        secondary=secondary,
        p50_ratio=_ratio(candidate.p50, primary.p50),
        p95_ratio=_ratio(candidate.p95, primary.p95),
        p99_ratio=_ratio(candidate.p99, primary.p99),
        histogram=histogram,
    )


def _paths(table: PathTable) -> list[PathReport]:
    ranked = sorted(table.paths.values(), key=lambda p: (-p.exchanges, -p.occurrences, p.path))
    return [
        PathReport(p.where, p.path, p.exchanges, p.occurrences, dict(p.kinds), p.example)
        for p in ranked
    ]


def endpoint_report(name: str, stats: EndpointStats) -> EndpointReport:
    pairs = sorted(stats.status_pairs.items(), key=lambda item: (-item[1], str(item[0])))
    return EndpointReport(
        endpoint=name,
        compared=stats.compared,
        matches=stats.matches,
        mismatches=stats.mismatches,
        candidate_errors=stats.candidate_errors,
        match_rate=_rate(stats.matches, stats.compared),
        mismatch_rate=_rate(stats.mismatches, stats.compared),
        error_rate=_rate(stats.candidate_errors, stats.compared),
        difference_count=stats.difference_count,
        candidate_error_kinds=dict(sorted(stats.error_kinds.items(), key=lambda kv: -kv[1])),
        status_pairs=[StatusPair(p, c, n) for (p, c), n in pairs],
        status_pairs_other=stats.status_pairs_other,
        paths=_paths(stats.paths),
        paths_other_exchanges=stats.paths.other_exchanges,
        paths_other_occurrences=stats.paths.other_occurrences,
        noise_paths=_paths(stats.noise),
        latency_ms=_latency(stats),
        secondary_errors=stats.secondary_errors,
        examples=[*stats.examples[MISMATCH], *stats.examples[CANDIDATE_ERROR]],
    )


def _worst_first(report: EndpointReport) -> tuple[float, int, str]:
    return (
        -(report.bad / report.compared if report.compared else 0),
        -report.compared,
        report.endpoint,
    )


def summarise(
    aggregator: Aggregator,
    *,
    sources: Sequence[str] = (),
    since: float | None = None,
    until: float | None = None,
    endpoint_patterns: Sequence[str] = (),
    now: float | None = None,
) -> Summary:
    """The report of everything added to ``aggregator`` so far."""
    steps = _summary_steps(aggregator, sources, since, until, endpoint_patterns, now)
    while (summary := _advance(steps)) is None:
        pass
    return summary


async def summarise_stepwise(aggregator: Aggregator, *, sources: Sequence[str] = ()) -> Summary:
    """`summarise` on an event loop that goes on serving: it lets other tasks run after every
    `SUMMARY_STEP` endpoints (a few hundred endpoints take tens of milliseconds). What is
    added meanwhile may be counted in some endpoints and not yet in others."""
    steps = _summary_steps(aggregator, sources, None, None, (), None)
    # Not a wait for something: a turn given to the other tasks between two steps.
    while (summary := _advance(steps)) is None:  # noqa: ASYNC110
        await asyncio.sleep(0)
    return summary


def _advance(steps: Generator[None, None, Summary]) -> Summary | None:
    """Take one step; the summary once no step is left."""
    try:
        next(steps)
    except StopIteration as done:
        summary: Summary = done.value
        return summary
    return None


def _summary_steps(
    aggregator: Aggregator,
    sources: Sequence[str],
    since: float | None,
    until: float | None,
    endpoint_patterns: Sequence[str],
    now: float | None,
) -> Generator[None, None, Summary]:
    overall = EndpointStats()
    reports = []
    for index, (name, stats) in enumerate(list(aggregator.endpoints.items()), 1):
        overall.merge(stats, details=False)
        reports.append(endpoint_report(name, stats))
        if index % SUMMARY_STEP == 0:
            yield
    endpoints = sorted(reports, key=_worst_first)
    series = aggregator.timeseries
    counts = aggregator.counts
    return Summary(
        generated_at=format_ts(time.time() if now is None else now),
        window=Window(
            first=None if aggregator.first_ts is None else format_ts(aggregator.first_ts),
            last=None if aggregator.last_ts is None else format_ts(aggregator.last_ts),
            since=None if since is None else format_ts(since),
            until=None if until is None else format_ts(until),
            endpoints=list(endpoint_patterns),
        ),
        input=InputReport(
            sources=list(sources),
            lines=counts.lines,
            exchanges=overall.compared,
            corrupted=counts.corrupted,
            invalid=counts.invalid,
            other_events=counts.other_events,
            filtered_out=counts.filtered_out,
        ),
        overall=endpoint_report("overall", overall),
        endpoints=endpoints,
        timeseries=TimeSeriesReport(
            bucket_seconds=series.width,
            buckets=[
                TimeBucketReport(
                    # A wide bucket holding year 1 starts before it, where no date is written.
                    format_ts(max(b.start, FIRST_EPOCH)),
                    b.compared,
                    b.mismatches,
                    b.candidate_errors,
                )
                for b in series.snapshot()
            ],
        ),
        latency_bins_ms=list(DISPLAY_BOUNDS_MS),
        limits={
            "max_endpoints": MAX_ENDPOINTS,
            "max_paths_per_endpoint": MAX_PATHS,
            "examples_per_outcome": EXAMPLES_PER_OUTCOME,
            "max_time_buckets": MAX_BUCKETS,
            "latency_relative_error": RELATIVE_ERROR,
        },
    )
