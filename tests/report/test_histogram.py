import math
import random

import pytest

from shadowproxy.report.histogram import (
    DISPLAY_BOUNDS_MS,
    MAX_MS,
    MIN_MS,
    RELATIVE_ERROR,
    LatencyHistogram,
    bucket_of,
    bucket_value,
)


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_quantiles_are_within_the_documented_relative_error(seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.lognormvariate(1, 1.2) for _ in range(20_000)]
    histogram = LatencyHistogram()
    for value in values:
        histogram.add(value)
    for q in (0.01, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
        estimate = histogram.quantile(q)
        exact = exact_quantile(values, q)
        assert estimate is not None
        assert abs(estimate - exact) <= RELATIVE_ERROR * exact * 1.0000001, (q, estimate, exact)


def test_every_value_in_range_is_reported_within_the_error() -> None:
    for value in (MIN_MS * 1.5, 0.0123, 1.0, 3.7, 999.9, 5000.0, MAX_MS / 2):
        reported = bucket_value(bucket_of(value))
        assert abs(reported - value) <= RELATIVE_ERROR * value * 1.0000001


def test_out_of_range_values_are_clamped() -> None:
    histogram = LatencyHistogram()
    histogram.add(0.0)
    histogram.add(-1.0)
    histogram.add(MAX_MS * 10)
    assert histogram.quantile(0.5) == MIN_MS
    assert histogram.quantile(1.0) == pytest.approx(MAX_MS, rel=RELATIVE_ERROR)
    assert histogram.count == 3


def test_empty_histogram_has_no_quantiles() -> None:
    histogram = LatencyHistogram()
    assert histogram.quantiles([0.5, 0.99]) == [None, None]
    assert histogram.mean is None


def test_quantiles_in_any_order_and_merge_equals_adding_all() -> None:
    rng = random.Random(7)
    values = [rng.expovariate(0.1) for _ in range(5000)]
    whole, left, right = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for i, value in enumerate(values):
        whole.add(value)
        (left if i % 2 else right).add(value)
    left.merge(right)
    assert left.counts == whole.counts
    assert left.count == whole.count
    assert left.max == whole.max
    assert left.total == pytest.approx(whole.total)
    p99, p50 = whole.quantiles([0.99, 0.5])
    assert [p99, p50] == [whole.quantile(0.99), whole.quantile(0.5)]


def test_display_bins_keep_every_count() -> None:
    histogram = LatencyHistogram()
    for value in (0.0005, 0.5, 5, 50, 500, 5e6):
        histogram.add(value)
    bins = histogram.display_bins()
    assert len(bins) == len(DISPLAY_BOUNDS_MS)
    assert sum(bins) == 6
    assert bins[-1] == 1  # beyond the last bound lands in the last bin
