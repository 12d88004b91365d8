"""How `benchmarks/run` turns rounds into figures: medians, and ratios taken within a round."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import proxy_bench


def _row(case: str, rps: float, p50: float = 1.0, errors: dict[str, int] | None = None) -> Any:
    return {
        "case": case,
        "label": case,
        "candidate": "healthy",
        "throughput": {"rps": rps, "errors": errors or {}},
        "fixed_rate": {"rps": 1000.0, "p50_ms": p50},
    }


def _round(nginx: float, off: float, mirror: float) -> list[Any]:
    return [
        _row("direct", 50_000.0),
        _row("nginx_mirror", nginx),
        _row("sp_off", off),
        _row("sp_mirror", mirror),
    ]


def test_numbers_are_medians_key_by_key() -> None:
    merged = proxy_bench.median_of(
        [
            {"rps": 1.0, "label": "a", "errors": {"timeout": 3}},
            {"rps": 5.0, "label": "b", "errors": {}},
            {"rps": 2.0, "label": "c", "errors": {"timeout": 1, "read": 7}},
        ]
    )
    assert merged == {"rps": 2.0, "label": "a", "errors": {"timeout": 2, "read": 7}}


def test_ratios_are_taken_within_each_round_then_the_median() -> None:
    # The machine slows down in round 2: within a round the ratio holds, across rounds the
    # medians of each case would pair a fast nginx with a slow shadowproxy.
    rounds = [
        _round(10_000, 16_000, 8_000),
        _round(5_000, 8_000, 4_000),
        _round(9_000, 15_000, 7_200),
    ]
    rows, summary = proxy_bench.combine_rounds(rounds)

    mirror = next(row for row in rows if row["case"] == "sp_mirror")
    assert mirror["throughput"]["rps"] == 7_200
    assert [r["throughput"]["rps"] for r in mirror["rounds"]] == [8_000, 4_000, 7_200]
    assert [r["sp_mirror_over_nginx_mirror"]["healthy"] for r in summary["by_round"]] == [
        0.8,
        0.8,
        0.8,
    ]
    assert summary["sp_mirror_over_nginx_mirror"]["healthy"] == 0.8
    assert summary["sp_mirror_over_sp_off"]["healthy"] == 0.5
    target = summary["targets"]["sp_mirror_over_sp_off"]
    assert target == {"value": 0.5, "target": ">= 0.7", "met": False}


def test_round_range_is_the_slowest_and_fastest_round() -> None:
    rows, _ = proxy_bench.combine_rounds(
        [_round(10_000, 16_000, 8_000), _round(5_000, 8_000, 4_000)]
    )
    nginx = next(row for row in rows if row["case"] == "nginx_mirror")
    assert proxy_bench.round_range(nginx) == (5_000, 10_000)
