import tracemalloc
from typing import Any

import pytest

from shadowproxy.report.aggregate import (
    EXAMPLE_DIFFERENCES,
    EXAMPLE_VALUE_CHARS,
    EXAMPLES_PER_OUTCOME,
    MAX_ENDPOINTS,
    MAX_KINDS,
    MAX_PATHS,
    MAX_STATUS_PAIRS,
    OTHER_ENDPOINT,
    OTHER_KIND,
    PATH_VALUE_CHARS,
    Aggregator,
    bounded_value,
    generalise_path,
)
from shadowproxy.report.jsonout import to_dict, to_json
from shadowproxy.report.summary import summarise
from shadowproxy.report.synthetic import difference, exchange_record, generate

ENDPOINT = "GET /users/{id}"


def mismatch(*differences: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return exchange_record(outcome="mismatch", differences=differences, **fields)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/items/3/price", "/items/*/price"),
        ("/items/12/tags/0", "/items/*/tags/*"),
        ("/0", "/*"),
        ("/a1/b", "/a1/b"),
        ("/v2/items", "/v2/items"),
        ("", ""),
    ],
)
def test_array_indices_are_generalised(path: str, expected: str) -> None:
    assert generalise_path(path) == expected


def test_counts_rates_paths_and_status_pairs() -> None:
    aggregator = Aggregator()
    for _ in range(6):
        aggregator.add(exchange_record(endpoint=ENDPOINT))
    aggregator.add(
        mismatch(
            difference("/items/0/price", 1, 2),
            difference("/items/1/price", 3, 4),
            difference("content-type", "a", "b", where="header"),
            difference_count=7,
        )
    )
    aggregator.add(mismatch(difference("/items/5/price", 5, None, kind="removed")))
    aggregator.add(mismatch(difference("", 200, 500, where="status"), candidate_status=500))
    aggregator.add(
        exchange_record(outcome="candidate_error", error="timeout", candidate_latency_ms=5000)
    )

    stats = aggregator.endpoints[ENDPOINT]
    assert (stats.compared, stats.matches, stats.mismatches, stats.candidate_errors) == (
        10,
        6,
        3,
        1,
    )
    assert stats.difference_count == 7 + 1 + 1
    assert stats.error_kinds == {"timeout": 1}
    assert stats.status_pairs == {(200, 200): 8, (200, 500): 1, (200, "timeout"): 1}
    price = stats.paths.paths[("body", "/items/*/price")]
    assert (price.exchanges, price.occurrences) == (2, 3)
    assert price.kinds == {"changed": 2, "removed": 1}
    assert price.example == {
        "path": "/items/0/price",
        "kind": "changed",
        "primary": 1,
        "candidate": 2,
    }
    assert stats.paths.paths[("header", "content-type")].exchanges == 1
    assert stats.paths.paths[("status", "")].exchanges == 1
    # The failed candidate's 5 s is not a latency: failures are judged by the error rate. Nor
    # is the primary's latency of that exchange: both sides are measured over the same set.
    assert stats.candidate.count == 9
    assert stats.primary.count == 9
    assert [e["outcome"] for e in stats.examples["mismatch"]] == ["mismatch"] * 3
    assert stats.examples["candidate_error"][0]["candidate"]["error"] == "timeout"


def test_other_events_and_invalid_records_are_counted_and_leave_no_trace() -> None:
    aggregator = Aggregator()
    aggregator.add({"event": "config_reloaded", "ts": "2026-11-27T18:40:13Z"})
    aggregator.add({"event": "comparison_skipped"})
    broken: list[dict[str, Any]] = [
        {"event": "exchange"},
        {**exchange_record(), "ts": "yesterday"},
        {**exchange_record(), "outcome": "sort of"},
        {**exchange_record(), "primary": None},
        {**exchange_record(), "candidate": {"status": 200, "latency_ms": "fast"}},
        {**exchange_record(), "endpoint": 7},
    ]
    for record in broken:
        assert aggregator.add(record) is False
    assert aggregator.counts.other_events == 2
    assert aggregator.counts.invalid == len(broken)
    assert aggregator.endpoints == {}
    assert aggregator.timeseries.buckets == {}


def test_malformed_differences_are_skipped() -> None:
    aggregator = Aggregator()
    record = mismatch(difference("/a", 1, 2))
    record["differences"].extend(["nonsense", {"where": 3}, None])
    aggregator.add(record)
    assert list(aggregator.endpoints[ENDPOINT].paths.paths) == [("body", "/a")]


def test_secondary_and_noise_are_counted() -> None:
    aggregator = Aggregator()
    aggregator.add(
        exchange_record(
            secondary={"status": 200, "latency_ms": 4.0, "bytes": 1},
            noise=[difference("/now", 1, 2)],
        )
    )
    aggregator.add(exchange_record(secondary={"status": None, "latency_ms": 1.0, "error": "reset"}))
    stats = aggregator.endpoints[ENDPOINT]
    assert stats.secondary is not None
    assert stats.secondary.count == 1
    assert stats.secondary_errors == 1
    assert stats.noise.paths[("body", "/now")].exchanges == 1


def test_examples_are_bounded_and_values_cut() -> None:
    aggregator = Aggregator()
    huge = {"blob": "x" * (EXAMPLE_VALUE_CHARS * 3)}
    many = [difference(f"/big/{n}", huge, None) for n in range(EXAMPLE_DIFFERENCES * 2)]
    for _ in range(EXAMPLES_PER_OUTCOME * 4):
        aggregator.add(mismatch(*many))
        aggregator.add(exchange_record(outcome="candidate_error", error="reset"))
    stats = aggregator.endpoints[ENDPOINT]
    assert len(stats.examples["mismatch"]) == EXAMPLES_PER_OUTCOME
    assert len(stats.examples["candidate_error"]) == EXAMPLES_PER_OUTCOME
    example = stats.examples["mismatch"][0]
    assert len(example["differences"]) == EXAMPLE_DIFFERENCES
    assert example["difference_count"] == EXAMPLE_DIFFERENCES * 2
    cut = example["differences"][0]["primary"]
    assert isinstance(cut, str)
    assert len(cut) < EXAMPLE_VALUE_CHARS + 100
    assert "cut" in cut
    path_example = stats.paths.paths[("body", "/big/*")].example
    assert path_example is not None
    assert len(path_example["primary"]) < PATH_VALUE_CHARS + 100
    assert bounded_value([1, 2]) == [1, 2]
    assert bounded_value(None) is None


def test_a_value_nested_deeper_than_can_be_shown_is_summarised() -> None:
    """The proxy never logs one (it summarises deep values); a log from elsewhere may."""
    deep: list[object] = []
    for _ in range(1000):
        deep = [deep]
    assert bounded_value(deep) == "… (not shown: nested too deep)"


def test_long_names_are_cut() -> None:
    aggregator = Aggregator()
    long_endpoint = "GET /" + "a" * 5000
    for _ in range(3):
        aggregator.add(mismatch(difference("/" + "k" * 5000, 1, 2), endpoint=long_endpoint))
    (name,) = aggregator.endpoints
    assert len(name) == PATH_VALUE_CHARS + 1
    stats = aggregator.endpoints[name]
    assert stats.compared == 3
    ((_, place),) = stats.paths.paths
    assert len(place) == PATH_VALUE_CHARS + 1
    assert stats.paths.paths[("body", place)].exchanges == 3


def test_every_field_of_an_example_is_bounded() -> None:
    """A log from elsewhere may put megabytes, or nesting deeper than JSON output allows, in
    any field: the examples keep them cut, and the report can still be written."""
    deep: list[object] = []
    for _ in range(300):
        deep = [deep]
    huge = "x" * 100_000
    record = mismatch(difference("/a", 1, 2, where=huge, kind=huge))
    record["differences"].append({"where": deep, "path": "/b", "kind": deep})
    record |= {"id": deep, "method": huge, "body_kind": deep, "difference_count": deep}
    aggregator = Aggregator()
    aggregator.add(record)
    assert len(to_json(summarise(aggregator))) < 20_000


def test_kinds_of_differences_and_errors_are_capped() -> None:
    aggregator = Aggregator()
    for n in range(MAX_KINDS * 3):
        aggregator.add(mismatch(difference("/a", 1, 2, kind=f"kind{n}")))
        aggregator.add(exchange_record(outcome="candidate_error", error=f"failure{n}"))
    stats = aggregator.endpoints[ENDPOINT]
    for kinds in (stats.paths.paths[("body", "/a")].kinds, stats.error_kinds):
        assert len(kinds) == MAX_KINDS + 1
        assert kinds[OTHER_KIND] == MAX_KINDS * 2
    whole = Aggregator()
    whole.merge(aggregator)
    whole.merge(aggregator)
    assert len(whole.endpoints[ENDPOINT].error_kinds) == MAX_KINDS + 1


def test_names_from_the_log_are_cut() -> None:
    aggregator = Aggregator()
    long = "z" * 5000
    aggregator.add(mismatch(difference("/a", 1, 2, where=long, kind=long)))
    aggregator.add(exchange_record(outcome="candidate_error", error=long))
    stats = aggregator.endpoints[ENDPOINT]
    ((where, _),) = stats.paths.paths
    ((kind, _),) = stats.paths.paths[(where, "/a")].kinds.items()
    ((failure, _),) = stats.error_kinds.items()
    assert {len(where), len(kind), len(failure)} == {PATH_VALUE_CHARS + 1}
    assert max(len(str(c)) for _, c in stats.status_pairs) == PATH_VALUE_CHARS + 1


def test_a_difference_count_from_elsewhere_is_checked() -> None:
    aggregator = Aggregator()
    for count in (2**64 - 1, 2**64 - 1, -5, "many"):
        aggregator.add(mismatch(difference("/a", 1, 2), difference_count=count))
    assert aggregator.endpoints[ENDPOINT].difference_count == 4
    assert to_json(summarise(aggregator))


def test_long_paths_are_not_kept_by_the_generalising_cache() -> None:
    aggregator = Aggregator()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for n in range(300):
            aggregator.add(mismatch(difference(f"/{n}/" + "k" * 50_000, 1, 2)))
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    # 300 paths of 50 kB went through; only their cut forms (300 characters) may stay.
    assert grown < 2 * 1024 * 1024, f"grew by {grown} bytes"


def distinct_records(start: int, count: int) -> list[dict[str, Any]]:
    """Every record a new endpoint, a new path and a new status pair."""
    return [
        mismatch(
            difference(f"/field{n}", n, n + 1),
            difference(f"/other{n}/x", n, n + 1),
            endpoint=f"GET /e{n}",
            candidate_status=100 + n % 500,
        )
        for n in range(start, start + count)
    ]


def test_tracked_endpoints_are_capped_with_an_other_bucket() -> None:
    aggregator = Aggregator()
    for record in distinct_records(0, MAX_ENDPOINTS * 3):
        aggregator.add(record)
    assert len(aggregator.endpoints) == MAX_ENDPOINTS + 1
    other = aggregator.endpoints[OTHER_ENDPOINT]
    assert other.compared == MAX_ENDPOINTS * 2
    assert len(other.paths.paths) == MAX_PATHS
    assert other.paths.other_exchanges == MAX_ENDPOINTS * 2 - MAX_PATHS // 2
    assert len(other.status_pairs) == MAX_STATUS_PAIRS
    assert aggregator.exchanges == MAX_ENDPOINTS * 3


def test_tracked_paths_per_endpoint_are_capped() -> None:
    aggregator = Aggregator()
    for n in range(MAX_PATHS * 5):
        aggregator.add(mismatch(difference(f"/f{n}", 1, 2), noise=[difference(f"/n{n}", 1, 2)]))
    stats = aggregator.endpoints[ENDPOINT]
    assert len(stats.paths.paths) == MAX_PATHS
    assert len(stats.noise.paths) == MAX_PATHS
    assert stats.paths.other_exchanges == MAX_PATHS * 4
    assert stats.paths.other_occurrences == MAX_PATHS * 4


def test_memory_stays_flat_however_many_distinct_records() -> None:
    aggregator = Aggregator()
    batch = 10_000
    # Traced from the start, so that what replaces cache entries is weighed against what it
    # replaced; the first batch fills every bounded table and cache.
    tracemalloc.start()
    try:
        for record in distinct_records(0, batch * 2):
            aggregator.add(record)
        before = tracemalloc.take_snapshot()
        for first in range(batch * 2, batch * 5, batch):
            for record in distinct_records(first, batch):
                aggregator.add(record)
            del record
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    # Under 35 bytes a record: any per-record leak would show; the rest is cache tables
    # resizing in place.
    assert grown < 1024 * 1024, f"grew by {grown} bytes over {batch * 3} distinct records"
    assert len(aggregator.endpoints) == MAX_ENDPOINTS + 1


def test_merge_of_halves_equals_one_pass() -> None:
    records = list(generate(4000, seed=5))
    whole, left, right = Aggregator(), Aggregator(), Aggregator()
    for i, record in enumerate(records):
        whole.add(record)
        (left if i < 1500 else right).add(record)
    left.merge(right)
    expected = rounded(to_dict(summarise(whole, now=0)))
    merged = rounded(to_dict(summarise(left, now=0)))
    assert merged == expected


def rounded(value: Any) -> Any:
    """Floats to 9 significant digits: sums added in another order differ in the last bits."""
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


def test_latencies_compare_the_same_exchanges_on_both_sides() -> None:
    """A candidate as fast as the primary that fails on the slowest 5% must not look faster:
    its failures are errors, and the primary's latencies of those exchanges are left out too."""
    aggregator = Aggregator()
    for ms in range(1, 101):
        slow = ms > 95
        aggregator.add(
            exchange_record(
                outcome="candidate_error" if slow else "match",
                error="timeout" if slow else None,
                primary_latency_ms=float(ms),
                candidate_latency_ms=5000.0 if slow else float(ms),
            )
        )
    stats = aggregator.endpoints[ENDPOINT]
    assert stats.primary.count == stats.candidate.count == 95
    assert stats.primary.quantile(0.99) == stats.candidate.quantile(0.99)
