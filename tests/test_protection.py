"""The candidate's protection: the token bucket and the circuit breaker, on a fake clock."""

from __future__ import annotations

import pytest

from shadowproxy.protection import Admission, Breaker, BreakerState, TokenBucket


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- token bucket ---------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.5, 3.0, 50.0, 400.0])
def test_bucket_holds_the_rate_within_ten_percent(rate: float) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate, clock=clock)
    seconds, step = 100.0, 0.001
    taken = 0
    for _ in range(int(seconds / step)):  # far more attempts than the rate allows
        taken += bucket.take()
        clock.advance(step)
    assert abs(taken - rate * seconds) <= 0.1 * rate * seconds, taken


def test_bucket_allows_a_burst_of_one_seconds_worth_then_refills() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, clock=clock)
    assert sum(bucket.take() for _ in range(100)) == 10
    clock.advance(0.35)
    assert sum(bucket.take() for _ in range(100)) == 3
    clock.advance(3600)  # idle time does not build up more than the burst
    assert sum(bucket.take() for _ in range(100)) == 10


def test_slow_rates_still_let_one_through() -> None:
    clock = FakeClock()
    bucket = TokenBucket(0.2, clock=clock)
    assert bucket.take()
    assert not bucket.take()
    clock.advance(4.9)
    assert not bucket.take()
    clock.advance(0.2)
    assert bucket.take()


def test_changing_the_rate_keeps_saved_tokens() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, clock=clock)
    for _ in range(8):
        assert bucket.take()
    bucket.set_rate(100)  # two saved tokens, no fresh burst
    assert sum(bucket.take() for _ in range(50)) == 2
    clock.advance(0.1)
    assert sum(bucket.take() for _ in range(50)) == 10
    bucket.set_rate(1)  # the burst shrinks to one
    clock.advance(10)
    assert sum(bucket.take() for _ in range(50)) == 1


# --- breaker --------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[BreakerState, str]] = []

    def __call__(self, state: BreakerState, reason: str) -> None:
        self.changes.append((state, reason))


def make_breaker(failures: int = 3, pause: float = 10.0) -> tuple[Breaker, FakeClock, Recorder]:
    clock, recorder = FakeClock(), Recorder()
    return Breaker(failures, pause, clock=clock, listener=recorder), clock, recorder


def state(breaker: Breaker) -> BreakerState:
    """Read afresh each time (a plain attribute read would be narrowed by the type checker)."""
    return breaker.state


def fail(breaker: Breaker, times: int) -> None:
    for _ in range(times):
        admission = breaker.allow()
        assert admission is Admission.NORMAL
        breaker.record(admission, ok=False)


def test_opens_after_n_consecutive_errors() -> None:
    breaker, _, recorder = make_breaker(failures=3)
    fail(breaker, 2)
    assert state(breaker) is BreakerState.CLOSED
    fail(breaker, 1)
    assert state(breaker) is BreakerState.OPEN
    assert breaker.is_open
    assert breaker.allow() is None
    assert recorder.changes == [(BreakerState.OPEN, "3 consecutive candidate errors")]


def test_a_success_resets_the_count() -> None:
    breaker, _, _ = make_breaker(failures=3)
    fail(breaker, 2)
    breaker.record(Admission.NORMAL, ok=True)
    fail(breaker, 2)
    assert state(breaker) is BreakerState.CLOSED


def test_half_opens_after_the_pause_with_a_single_probe() -> None:
    breaker, clock, recorder = make_breaker(failures=1, pause=10)
    fail(breaker, 1)
    clock.advance(9.99)
    assert breaker.allow() is None
    clock.advance(0.01)
    assert breaker.allow() is Admission.PROBE
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.is_open
    assert breaker.allow() is None  # one probe at a time
    assert recorder.changes[-1] == (BreakerState.HALF_OPEN, "pause over")


def test_probe_success_closes() -> None:
    breaker, clock, recorder = make_breaker(failures=2, pause=5)
    fail(breaker, 2)
    clock.advance(5)
    probe = breaker.allow()
    assert probe is Admission.PROBE
    breaker.record(probe, ok=True)
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.allow() is Admission.NORMAL
    assert [state for state, _ in recorder.changes] == [
        BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED,
    ]  # fmt: skip
    fail(breaker, 1)  # the count started again from zero
    assert state(breaker) is BreakerState.CLOSED


def test_probe_failure_pauses_again() -> None:
    breaker, clock, recorder = make_breaker(failures=1, pause=5)
    fail(breaker, 1)
    clock.advance(5)
    probe = breaker.allow()
    assert probe is not None
    breaker.record(probe, ok=False)
    assert state(breaker) is BreakerState.OPEN
    assert recorder.changes[-1] == (BreakerState.OPEN, "probe failed")
    clock.advance(4)
    assert breaker.allow() is None
    clock.advance(1)
    assert breaker.allow() is Admission.PROBE


def test_late_results_do_not_decide_while_open() -> None:
    breaker, clock, _ = make_breaker(failures=2, pause=5)
    early = [breaker.allow() for _ in range(4)]  # four mirrors under way
    assert early == [Admission.NORMAL] * 4
    breaker.record(Admission.NORMAL, ok=False)
    breaker.record(Admission.NORMAL, ok=False)
    assert state(breaker) is BreakerState.OPEN
    breaker.record(Admission.NORMAL, ok=True)  # answered late: still open
    assert state(breaker) is BreakerState.OPEN
    clock.advance(5)
    probe = breaker.allow()
    assert probe is Admission.PROBE
    breaker.record(Admission.NORMAL, ok=True)  # not the probe: still half-open
    assert state(breaker) is BreakerState.HALF_OPEN
    breaker.record(probe, ok=True)
    assert state(breaker) is BreakerState.CLOSED


def test_late_results_do_not_count_once_closed_again() -> None:
    """With a pause shorter than the candidate's timeout, answers of requests admitted before
    the breaker opened may come after it closed: they must not count toward opening it."""
    breaker, clock, _ = make_breaker(failures=3, pause=1)
    admitted = breaker.generation
    early = [breaker.allow() for _ in range(5)]
    for admission in early[:3]:
        assert admission is not None
        breaker.record(admission, ok=False, generation=admitted)
    assert state(breaker) is BreakerState.OPEN
    clock.advance(1)
    probe = breaker.allow()
    assert probe is Admission.PROBE
    breaker.record(probe, ok=True, generation=breaker.generation)
    assert state(breaker) is BreakerState.CLOSED
    for admission in early[3:]:  # the two old ones answer late, failed
        assert admission is not None
        breaker.record(admission, ok=False, generation=admitted)
    now = breaker.generation
    assert breaker.allow() is Admission.NORMAL
    breaker.record(Admission.NORMAL, ok=False, generation=now)
    assert state(breaker) is BreakerState.CLOSED  # one failure of three, not three
    assert breaker.consecutive == 1


def test_a_probe_that_never_reached_the_candidate_passes_its_turn() -> None:
    breaker, clock, _ = make_breaker(failures=1, pause=5)
    fail(breaker, 1)
    clock.advance(5)
    probe = breaker.allow()
    assert probe is Admission.PROBE
    breaker.release(probe)
    assert breaker.allow() is Admission.PROBE


def test_configure_keeps_state() -> None:
    breaker, clock, _ = make_breaker(failures=5, pause=60)
    fail(breaker, 3)
    breaker.configure(failures=10, pause=60)
    assert state(breaker) is BreakerState.CLOSED
    breaker.configure(failures=3, pause=60)  # the run so far is already long enough
    assert state(breaker) is BreakerState.OPEN
    breaker.configure(failures=3, pause=1)  # an open breaker stays open, under the new pause
    assert breaker.allow() is None
    clock.advance(1)
    assert breaker.allow() is Admission.PROBE
