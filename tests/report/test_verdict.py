from typing import Any

import orjson
import pytest

from shadowproxy.report.aggregate import Aggregator
from shadowproxy.report.summary import Summary, summarise
from shadowproxy.report.synthetic import exchange_record
from shadowproxy.report.verdict import Bars, Status, evaluate, render_text, to_json

BARS = Bars(max_mismatch_rate=0.01, max_error_rate=0.01, max_p99_latency_ratio=1.2, min_samples=100)


def summary_of(*groups: tuple[int, dict[str, Any]]) -> Summary:
    """``(count, exchange_record options)`` groups in one summary."""
    aggregator = Aggregator()
    for count, options in groups:
        for _ in range(count):
            aggregator.add(exchange_record(**options))
    return summarise(aggregator)


def test_passes_when_every_bar_is_met() -> None:
    verdict = evaluate(
        summary_of((995, {}), (5, {"outcome": "mismatch"}), (400, {"endpoint": "GET /b"})), BARS
    )
    assert verdict.status is Status.PASS
    assert verdict.exit_code == 0
    assert [c.status for c in verdict.overall.checks] == [Status.PASS] * 3
    mismatch = verdict.overall.checks[0]
    assert (mismatch.bar, mismatch.limit) == ("max_mismatch_rate", 0.01)
    assert mismatch.measured == pytest.approx(5 / 1400)


def test_a_bar_at_its_limit_passes() -> None:
    verdict = evaluate(summary_of((99, {}), (1, {"outcome": "mismatch"})), BARS)
    assert verdict.overall.checks[0].measured == pytest.approx(0.01)
    assert verdict.status is Status.PASS


def test_fails_on_one_endpoint_even_when_overall_passes() -> None:
    verdict = evaluate(
        summary_of(
            (10_000, {}),
            (60, {"endpoint": "GET /slow", "candidate_latency_ms": 9.0}),
        ),
        Bars(max_p99_latency_ratio=1.2, min_samples=50),
    )
    assert verdict.overall.status is Status.PASS
    assert verdict.status is Status.FAIL
    assert verdict.exit_code == 1
    slow = next(e for e in verdict.endpoints if e.endpoint == "GET /slow")
    ratio = next(c for c in slow.checks if c.bar == "max_p99_latency_ratio")
    assert ratio.status is Status.FAIL
    assert ratio.measured == pytest.approx(3.0, rel=0.03)
    assert "1 of 2 endpoints fail" in verdict.reason


def test_error_rate_fails() -> None:
    verdict = evaluate(
        summary_of((900, {}), (100, {"outcome": "candidate_error", "error": "reset"})), BARS
    )
    assert verdict.status is Status.FAIL
    errors = next(c for c in verdict.overall.checks if c.bar == "max_error_rate")
    assert errors.measured == pytest.approx(0.1)


def test_too_little_data_is_exit_2_and_small_endpoints_are_skipped() -> None:
    verdict = evaluate(summary_of((50, {})), BARS)
    assert verdict.status is Status.INSUFFICIENT_DATA
    assert verdict.exit_code == 2
    assert "50 exchanges compared" in verdict.reason

    verdict = evaluate(
        summary_of(
            (500, {}),
            (8, {"endpoint": "GET /rare"}),
            (2, {"endpoint": "GET /rare", "outcome": "mismatch"}),
        ),
        BARS,
    )
    rare = next(e for e in verdict.endpoints if e.endpoint == "GET /rare")
    assert rare.status is Status.SKIPPED
    assert verdict.status is Status.PASS
    assert "skipped" in verdict.reason


def test_an_unmeasurable_bar_fails() -> None:
    verdict = evaluate(
        summary_of((200, {"outcome": "candidate_error", "error": "refused"})),
        Bars(max_p99_latency_ratio=1.2, min_samples=1),
    )
    check = verdict.overall.checks[0]
    assert check.measured is None
    assert check.status is Status.FAIL


def test_text_and_json_output() -> None:
    verdict = evaluate(summary_of((995, {}), (5, {"outcome": "mismatch"})), BARS)
    text = render_text(verdict)
    assert "overall  (1,000 exchanges)  PASS" in text
    assert "mismatch rate" in text
    assert "0.00500  <= 0.01" in text
    assert text.rstrip().splitlines()[-1] == "verdict: PASS: all bars met"
    data = orjson.loads(to_json(verdict))
    assert data["status"] == "pass"
    assert data["exit_code"] == 0
    assert data["bars"]["min_samples"] == 100
    assert data["overall"]["checks"][0] == {
        "bar": "max_mismatch_rate",
        "label": "mismatch rate",
        "limit": 0.01,
        "measured": 0.005,
        "status": "pass",
    }


def test_text_output_shows_control_characters_escaped() -> None:
    verdict = evaluate(summary_of((10, {"endpoint": "GET /\x1b[2Jx"})), Bars(max_error_rate=0.1))
    text = render_text(verdict)
    assert "\x1b" not in text
    assert "GET /\\x1b[2Jx" in text
