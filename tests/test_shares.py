"""Sharing ``mirror.max_rps`` among worker processes by demand."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shadowproxy.shares import (
    IDLE_FLOOR,
    REBALANCE_INTERVAL,
    STALE_AFTER,
    DemandBoard,
    SharedRate,
    fair_shares,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_fair_shares_serve_the_small_demands_whole_and_split_the_rest() -> None:
    assert fair_shares(100, [10, 500, 500]) == [10, 45, 45]
    assert fair_shares(100, [0, 1000]) == [0, 100]


def test_fair_shares_split_what_nobody_asks_for_evenly() -> None:
    assert fair_shares(100, [10, 30]) == [40, 60]
    assert fair_shares(100, [0, 0, 0, 0]) == [25, 25, 25, 25]


@given(
    st.floats(min_value=0.01, max_value=1e6),
    st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=16),
)
def test_fair_shares_sum_to_the_total_and_never_starve_a_demand(
    total: float, demands: list[float]
) -> None:
    shares = fair_shares(total, demands)
    assert sum(shares) == pytest.approx(total)
    even = total / len(demands)
    for demand, share in zip(demands, shares, strict=True):
        # Whoever asks for no more than an even split gets all it asks for.
        assert share >= min(demand, even) - 1e-9 * total


def test_board_slots_are_shared_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "demand"
    DemandBoard.create(path, 3)
    first, third = DemandBoard(path, 3, 0), DemandBoard(path, 3, 2)
    first.say(12.5, share=20.0, now=100.0)
    third.say(3.0, share=0.1, now=100.5)
    assert third.demands(now=101.0) == [12.5, 0.0, 3.0]
    # A worker that has said nothing for a while is taken as idle...
    assert first.demands(now=100.0 + STALE_AFTER + 0.1) == [0.0, 0.0, 3.0]
    # ...once its bucket would be full: at 0.1 a second, after 10 s.
    assert first.demands(now=110.5) == [0.0, 0.0, 3.0]
    assert first.demands(now=110.6) == [0.0, 0.0, 0.0]
    first.close()
    third.close()


def test_board_refuses_an_index_beyond_the_workers(tmp_path: Path) -> None:
    path = tmp_path / "demand"
    DemandBoard.create(path, 2)
    with pytest.raises(ValueError, match="worker index 2 is not below 2"):
        DemandBoard(path, 2, 2)


def test_without_a_board_each_worker_takes_an_even_split() -> None:
    assert SharedRate(100, workers=4).rate == 25
    assert SharedRate(100, workers=0).rate == 100


def _take_all(rate: SharedRate, clock: FakeClock, seconds: float, per_second: int) -> int:
    """Ask ``per_second`` times a second for ``seconds``; how many were allowed."""
    allowed = 0
    for _ in range(round(seconds * per_second)):
        clock.now += 1 / per_second
        allowed += rate.take()
    return allowed


def test_a_worker_holding_all_the_traffic_gets_nearly_all_the_rate(tmp_path: Path) -> None:
    path = tmp_path / "demand"
    DemandBoard.create(path, 2)
    clock = FakeClock()
    busy = SharedRate(40, board=DemandBoard(path, 2, 0), clock=clock)
    idle = SharedRate(40, board=DemandBoard(path, 2, 1), clock=clock)
    assert busy.rate == idle.rate == 20  # an even split until the first look

    allowed = _take_all(busy, clock, seconds=10, per_second=500)
    floor = 40 / 2 * IDLE_FLOOR
    assert busy.rate == pytest.approx(40 - floor)
    # The burst, then the even split for the first half second, then its share.
    assert allowed == pytest.approx(20 + 20 * REBALANCE_INTERVAL + (40 - floor) * 9.5, abs=3)

    # Traffic comes to the idle worker: until its next look it keeps only the floor...
    _take_all(idle, clock, seconds=0.01, per_second=500)
    assert idle.rate == pytest.approx(floor)
    # ...and once both have said their demand, the two split the rate evenly.
    for _ in range(4):
        _take_all(busy, clock, seconds=REBALANCE_INTERVAL / 2, per_second=500)
        _take_all(idle, clock, seconds=REBALANCE_INTERVAL / 2, per_second=500)
    assert busy.rate == pytest.approx(20, rel=0.05)
    assert idle.rate == pytest.approx(20, rel=0.05)


@pytest.mark.parametrize("per_second", [5, 50, 400])
def test_steady_shares_add_up_to_the_total(tmp_path: Path, per_second: int) -> None:
    path = tmp_path / "demand"
    DemandBoard.create(path, 3)
    clock = FakeClock()
    rates = [SharedRate(30, board=DemandBoard(path, 3, i), clock=clock) for i in range(3)]
    loads = (per_second, 2 * per_second, 7)
    for _ in range(6):  # the workers take turns, each looking at the others' last word
        for rate, load in zip(rates, loads, strict=True):
            _take_all(rate, clock, seconds=REBALANCE_INTERVAL / 2, per_second=load)
    assert sum(r.rate for r in rates) == pytest.approx(30, rel=0.02)
    # Each asks a third of the time, so its demand is a third of its load; the smallest
    # one is served whole.
    assert rates[2].rate >= 7 / 3 * 0.98


def test_workers_asked_less_often_than_stale_after_stay_within_the_total(
    tmp_path: Path,
) -> None:
    """A small max_rps over many workers, each asked once every few seconds: each saves
    tokens at its share between its requests, so the others must count it all that time."""
    workers, total, gap, rounds = 8, 0.1, 4.0, 500
    path = tmp_path / "demand"
    DemandBoard.create(path, workers)
    clock = FakeClock()
    rates = [
        SharedRate(total, board=DemandBoard(path, workers, i), clock=clock) for i in range(workers)
    ]
    start, allowed = clock.now, 0
    for turn in range(rounds):
        for i, rate in enumerate(rates):  # in turn, evenly spread over the gap
            clock.now = start + (turn + i / workers) * gap
            allowed += rate.take()
    # The total over the whole time, and each worker's first token.
    assert allowed <= total * rounds * gap + workers


def test_a_reloaded_total_keeps_each_share_in_proportion(tmp_path: Path) -> None:
    path = tmp_path / "demand"
    DemandBoard.create(path, 2)
    clock = FakeClock()
    busy = SharedRate(40, board=DemandBoard(path, 2, 0), clock=clock)
    _take_all(busy, clock, seconds=1, per_second=500)
    before = busy.rate
    busy.set_total(80)
    assert busy.rate == pytest.approx(2 * before)
