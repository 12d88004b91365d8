import random

from shadowproxy.report.timeseries import (
    COMPARED,
    ERRORS,
    MAX_BUCKETS,
    MISMATCHES,
    TimeSeries,
)

START = 1_795_804_800.0


def totals(series: TimeSeries) -> tuple[int, int, int]:
    buckets = series.snapshot()
    return (
        sum(b.compared for b in buckets),
        sum(b.mismatches for b in buckets),
        sum(b.candidate_errors for b in buckets),
    )


def test_counts_per_second_bucket() -> None:
    series = TimeSeries()
    series.add(START + 0.2)
    series.add(START + 0.7, MISMATCHES)
    series.add(START + 2.1, ERRORS)
    buckets = series.snapshot()
    assert series.width == 1
    assert [(b.compared, b.mismatches, b.candidate_errors) for b in buckets] == [
        (2, 1, 0),
        (0, 0, 0),
        (1, 0, 1),
    ]
    assert buckets[0].start == START


def test_a_long_span_widens_buckets_without_losing_counts() -> None:
    series = TimeSeries()
    for second in range(0, 86_400, 7):
        series.add(START + second, MISMATCHES if second % 2 else COMPARED)
    assert len(series.snapshot()) <= MAX_BUCKETS
    assert len(series.buckets) <= MAX_BUCKETS
    assert series.width >= 86_400 // MAX_BUCKETS
    expected = len(range(0, 86_400, 7))
    assert totals(series)[0] == expected
    assert totals(series)[1] == sum(1 for s in range(0, 86_400, 7) if s % 2)


def test_order_does_not_matter_and_merge_equals_one_series() -> None:
    rng = random.Random(3)
    events = [
        (START + rng.uniform(0, 20_000), rng.choice([COMPARED, MISMATCHES, ERRORS]))
        for _ in range(3000)
    ]
    ordered, shuffled, left, right = TimeSeries(), TimeSeries(), TimeSeries(), TimeSeries()
    for epoch, column in sorted(events):
        ordered.add(epoch, column)
    rng.shuffle(events)
    for i, (epoch, column) in enumerate(events):
        shuffled.add(epoch, column)
        (left if i < 100 else right).add(epoch, column)
    left.merge(right)
    assert shuffled.snapshot() == ordered.snapshot()
    assert left.snapshot() == ordered.snapshot()
