import math
from collections import Counter, defaultdict
from typing import Any

import orjson
import pytest

from shadowproxy.report.aggregate import OTHER_ENDPOINT, Aggregator, generalise_path
from shadowproxy.report.histogram import RELATIVE_ERROR
from shadowproxy.report.jsonout import to_dict, to_json
from shadowproxy.report.summary import SCHEMA, summarise
from shadowproxy.report.synthetic import DEFAULT_START, exchange_record, generate

RECORDS = 30_000


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@pytest.fixture(scope="module")
def generated() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    records = list(generate(RECORDS, seed=11))
    aggregator = Aggregator()
    for record in records:
        aggregator.add(record)
    return records, to_dict(summarise(aggregator, sources=["gen.jsonl"], now=DEFAULT_START))


def test_rates_match_the_records(generated: tuple[list[dict[str, Any]], dict[str, Any]]) -> None:
    records, summary = generated
    exchanges = [r for r in records if r["event"] == "exchange"]
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    for record in exchanges:
        outcomes[record["endpoint"]][record["outcome"]] += 1
    assert summary["input"]["exchanges"] == len(exchanges)
    assert summary["input"]["other_events"] == RECORDS - len(exchanges)
    for report in summary["endpoints"]:
        counts = outcomes[report["endpoint"]]
        total = sum(counts.values())
        assert report["compared"] == total
        assert report["mismatches"] == counts["mismatch"]
        assert report["candidate_errors"] == counts["candidate_error"]
        assert report["match_rate"] == pytest.approx(counts["match"] / total)
        assert report["mismatch_rate"] == pytest.approx(counts["mismatch"] / total)
        assert report["error_rate"] == pytest.approx(counts["candidate_error"] / total)


def test_percentiles_are_within_the_documented_error(
    generated: tuple[list[dict[str, Any]], dict[str, Any]],
) -> None:
    records, summary = generated
    latencies: dict[tuple[str, str], list[float]] = defaultdict(list)
    for record in records:
        if record["event"] != "exchange":
            continue
        if record["primary"]["status"] is None or record["candidate"]["status"] is None:
            continue  # only exchanges both sides answered are measured
        for side in ("primary", "candidate"):
            latencies[(record["endpoint"], side)].append(record[side]["latency_ms"])
            latencies[("overall", side)].append(record[side]["latency_ms"])
    for report in [*summary["endpoints"], summary["overall"]]:
        for side in ("primary", "candidate"):
            values = latencies[(report["endpoint"], side)]
            measured = report["latency_ms"][side]
            assert measured["count"] == len(values)
            assert measured["max"] == pytest.approx(max(values))
            for q, key in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
                exact = nearest_rank(values, q)
                assert abs(measured[key] - exact) <= RELATIVE_ERROR * exact * 1.000001
        ratio = report["latency_ms"]["p99_ratio"]
        exact_ratio = nearest_rank(
            latencies[(report["endpoint"], "candidate")], 0.99
        ) / nearest_rank(latencies[(report["endpoint"], "primary")], 0.99)
        assert ratio == pytest.approx(exact_ratio, rel=2.1 * RELATIVE_ERROR)


def test_top_paths_and_worst_first(generated: tuple[list[dict[str, Any]], dict[str, Any]]) -> None:
    records, summary = generated
    rates = [
        (r["mismatches"] + r["candidate_errors"]) / r["compared"] for r in summary["endpoints"]
    ]
    assert rates == sorted(rates, reverse=True)
    assert summary["endpoints"][0]["endpoint"] == "GET /search"

    per_path: Counter[tuple[str, str]] = Counter()
    for record in records:
        if record.get("endpoint") == "GET /search" and record["outcome"] == "mismatch":
            for key in {(d["where"], generalise_path(d["path"])) for d in record["differences"]}:
                per_path[key] += 1
    search = summary["endpoints"][0]
    reported = {(p["where"], p["path"]): p["exchanges"] for p in search["paths"]}
    assert reported == dict(per_path)
    top = search["paths"][0]
    assert top["exchanges"] == max(per_path.values())
    assert top["path"] in ("/items/*/currency", "/items/*/price")
    assert top["example"]["path"].startswith("/items/")
    differing = {(p["primary"], p["candidate"]) for p in search["status_pairs"]}
    assert (200, 500) in differing


def test_schema_and_time_series(generated: tuple[list[dict[str, Any]], dict[str, Any]]) -> None:
    _records, summary = generated
    assert summary["schema"] == SCHEMA
    assert summary["generated_at"] == "2026-11-27T18:40:00.000Z"
    assert summary["window"]["first"] == "2026-11-27T18:40:00.000Z"
    assert summary["input"]["sources"] == ["gen.jsonl"]
    buckets = summary["timeseries"]["buckets"]
    assert sum(b["compared"] for b in buckets) == summary["overall"]["compared"]
    assert sum(b["mismatches"] for b in buckets) == summary["overall"]["mismatches"]
    assert sum(b["candidate_errors"] for b in buckets) == summary["overall"]["candidate_errors"]
    bins = summary["latency_bins_ms"]
    for report in summary["endpoints"]:
        histogram = report["latency_ms"]["histogram"]
        assert len(histogram["primary"]) == len(bins)
        assert sum(histogram["primary"]) == report["latency_ms"]["primary"]["count"]
    assert summary["overall"]["paths"] == []
    assert summary["overall"]["examples"] == []


def test_empty_summary_serialises() -> None:
    summary = to_dict(summarise(Aggregator(), now=DEFAULT_START))
    assert summary["endpoints"] == []
    assert summary["overall"]["match_rate"] is None
    assert summary["overall"]["latency_ms"]["p99_ratio"] is None
    assert summary["window"]["first"] is None
    assert summary["timeseries"]["buckets"] == []


def test_other_bucket_is_reported_by_name() -> None:
    aggregator = Aggregator()
    for n in range(600):
        aggregator.add(exchange_record(endpoint=f"GET /e{n}"))
    names = [r["endpoint"] for r in to_dict(summarise(aggregator))["endpoints"]]
    assert OTHER_ENDPOINT in names


def test_json_survives_values_orjson_does_not_know() -> None:
    aggregator = Aggregator()
    record = exchange_record(outcome="candidate_error", error="reset")
    record["candidate"]["detail"] = {1, 2}  # a live record may hold anything
    aggregator.add(record)
    data = orjson.loads(to_json(summarise(aggregator)))
    assert data["endpoints"][0]["examples"][0]["candidate"]["detail"] == "{1, 2}"
