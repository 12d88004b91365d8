"""Pass or fail a dark launch against bars, per endpoint and overall: a pipeline's gate.

Rules:

- a bar is a maximum and is met when the measured value is at most the limit;
- the verdict is ``insufficient_data`` (exit 2) when fewer than ``min_samples`` exchanges were
  compared overall;
- an endpoint with fewer than ``min_samples`` exchanges is not judged on its own (``skipped``),
  but its exchanges count in the overall figures;
- a bar that cannot be measured with enough samples (a p99 ratio when the candidate never
  answered) fails, since a gate must not pass on what it cannot see;
- the p99 latency ratio is computed from histograms accurate to 1 % each, so a measured ratio
  is within about 2 % of the exact one.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from shadowproxy.report.summary import EndpointReport, Summary
from shadowproxy.report.terminal import printable

SCHEMA = "shadowproxy.verdict/1"
EXIT_PASS, EXIT_FAIL, EXIT_INSUFFICIENT = 0, 1, 2


class Status(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIPPED = "skipped"
    INSUFFICIENT_DATA = "insufficient_data"


@dataclass(frozen=True, slots=True)
class Bars:
    max_mismatch_rate: float | None = None
    max_error_rate: float | None = None
    max_p99_latency_ratio: float | None = None
    min_samples: int = 1

    @property
    def any(self) -> bool:
        limits = (self.max_mismatch_rate, self.max_error_rate, self.max_p99_latency_ratio)
        return any(limit is not None for limit in limits)


_MEASURES: dict[str, tuple[str, Callable[[EndpointReport], float | None]]] = {
    "max_mismatch_rate": ("mismatch rate", lambda r: r.mismatch_rate),
    "max_error_rate": ("error rate", lambda r: r.error_rate),
    "max_p99_latency_ratio": ("p99 latency ratio", lambda r: r.latency_ms.p99_ratio),
}


@dataclass(frozen=True, slots=True)
class Check:
    bar: str
    label: str
    limit: float
    measured: float | None
    status: Status


@dataclass(frozen=True, slots=True)
class ScopeVerdict:
    """The checks of one endpoint, or of all together (``endpoint == "overall"``)."""

    endpoint: str
    compared: int
    status: Status
    checks: list[Check]


@dataclass(frozen=True, slots=True)
class Verdict:
    status: Status
    exit_code: int
    reason: str
    bars: Bars
    overall: ScopeVerdict
    endpoints: list[ScopeVerdict]
    schema: str = SCHEMA


def _judge(report: EndpointReport, bars: Bars, *, overall: bool) -> ScopeVerdict:
    if report.compared < bars.min_samples:
        status = Status.INSUFFICIENT_DATA if overall else Status.SKIPPED
        return ScopeVerdict(report.endpoint, report.compared, status, [])
    checks = []
    for bar, (label, measure) in _MEASURES.items():
        limit = getattr(bars, bar)
        if limit is None:
            continue
        measured = measure(report)
        passed = measured is not None and measured <= limit
        checks.append(Check(bar, label, limit, measured, Status.PASS if passed else Status.FAIL))
    failed = any(check.status is Status.FAIL for check in checks)
    return ScopeVerdict(
        report.endpoint, report.compared, Status.FAIL if failed else Status.PASS, checks
    )


def evaluate(summary: Summary, bars: Bars) -> Verdict:
    """Judge a report against the bars."""
    overall = _judge(summary.overall, bars, overall=True)
    endpoints = [_judge(report, bars, overall=False) for report in summary.endpoints]
    failing = [e for e in endpoints if e.status is Status.FAIL]
    if overall.status is Status.INSUFFICIENT_DATA:
        return Verdict(
            Status.INSUFFICIENT_DATA,
            EXIT_INSUFFICIENT,
            f"{summary.overall.compared:,} exchanges compared, fewer than the "
            f"{bars.min_samples:,} required",
            bars,
            overall,
            endpoints,
        )
    if overall.status is Status.FAIL or failing:
        parts = []
        if overall.status is Status.FAIL:
            parts.append("overall bars not met")
        if failing:
            parts.append(f"{len(failing)} of {len(endpoints)} endpoints fail")
        return Verdict(Status.FAIL, EXIT_FAIL, "; ".join(parts), bars, overall, endpoints)
    skipped = sum(e.status is Status.SKIPPED for e in endpoints)
    reason = "all bars met"
    if skipped:
        reason += f" ({skipped} endpoints with fewer than {bars.min_samples:,} exchanges skipped)"
    return Verdict(Status.PASS, EXIT_PASS, reason, bars, overall, endpoints)


def _measured(check: Check) -> str:
    if check.measured is None:
        return "unmeasurable"
    if check.bar == "max_p99_latency_ratio":
        return f"{check.measured:.3f}"
    return f"{check.measured:.5f}"


def _scope_lines(scope: ScopeVerdict, bars: Bars) -> list[str]:
    title = f"{printable(scope.endpoint)}  ({scope.compared:,} exchanges)"
    if scope.status in (Status.SKIPPED, Status.INSUFFICIENT_DATA):
        word = "SKIPPED" if scope.status is Status.SKIPPED else "INSUFFICIENT DATA"
        return [f"{title}  {word}: fewer than {bars.min_samples:,} exchanges"]
    lines = [f"{title}  {scope.status.value.upper()}"]
    for check in scope.checks:
        lines.append(
            f"  {check.label:<18} {_measured(check):>12}  <= {check.limit:<10g} "
            f"{check.status.value.upper()}"
        )
    return lines


def render_text(verdict: Verdict) -> str:
    """The verdict for a pipeline's log: one block per scope, the decision last."""
    lines = _scope_lines(verdict.overall, verdict.bars)
    for scope in verdict.endpoints:
        lines.extend(_scope_lines(scope, verdict.bars))
    word = verdict.status.value.upper().replace("_", " ")
    lines.append(f"verdict: {word}: {verdict.reason}")
    return "\n".join(lines) + "\n"


def to_json(verdict: Verdict, *, indent: bool = True) -> bytes:
    """``{"schema", "status", "exit_code", "reason", "bars", "overall", "endpoints"}``; each
    scope is ``{"endpoint", "compared", "status", "checks": [{"bar", "label", "limit",
    "measured", "status"}]}``; statuses are pass, fail, skipped or insufficient_data."""
    return orjson.dumps(verdict, option=orjson.OPT_INDENT_2 if indent else 0)
