"""Protecting the candidate: a rate limit and a circuit breaker, both pure and clock-driven.

Neither starts a timer or a task: state changes happen when a request asks to be mirrored or a
mirror's result comes back, against the clock given to the constructor (``time.monotonic``
unless a test passes its own). Both are per process.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

Clock = Callable[[], float]


class TokenBucket:
    """Allows ``rate`` events per second on average, in bursts of up to ``burst``.

    ``burst`` defaults to one second's worth, and is at least one event, so that rates below
    one per second still let a request through now and then.
    """

    __slots__ = ("_clock", "_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float | None = None, *, clock: Clock = time.monotonic):
        if rate <= 0:
            raise ValueError("rate must be greater than 0")
        self._clock = clock
        self.rate = rate
        self.burst = max(1.0, rate if burst is None else burst)
        self._tokens = self.burst
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._stamp = now

    def take(self) -> bool:
        """One event now, if the budget allows it."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def set_rate(self, rate: float, burst: float | None = None) -> None:
        """Change the rate from now on, keeping the tokens saved so far (up to the new burst)."""
        if rate <= 0:
            raise ValueError("rate must be greater than 0")
        self._refill()
        self.rate = rate
        self.burst = max(1.0, rate if burst is None else burst)
        self._tokens = min(self._tokens, self.burst)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    """Mirroring as usual; consecutive candidate errors are counted."""
    OPEN = "open"
    """Mirroring paused until the pause is over."""
    HALF_OPEN = "half_open"
    """The pause is over: one probe is let through, and its result decides."""


class Admission(enum.Enum):
    """How a request got past the breaker; hand it back with the result."""

    NORMAL = "normal"
    PROBE = "probe"


Listener = Callable[[BreakerState, str], None]


class Breaker:
    """Opens after ``failures`` consecutive candidate errors; after ``pause`` seconds lets one
    probe through: its success closes the breaker, its failure opens it for another pause.

    Results of requests admitted before the breaker last opened are ignored, while it is
    open and after it has closed again: only the probe decides, and a slow candidate's late
    answers cannot count twice. Pass ``generation`` (read at admission) with each result.
    ``listener(state, reason)`` hears every change of state.
    """

    def __init__(
        self,
        failures: int,
        pause: float,
        *,
        clock: Clock = time.monotonic,
        listener: Listener | None = None,
    ) -> None:
        self._clock = clock
        self._listener = listener
        self.failures = failures
        self.pause = pause
        self.state = BreakerState.CLOSED
        self.consecutive = 0
        self._opened_at = 0.0
        self._probing = False
        self.generation = 0
        """Goes up each time the breaker opens."""

    @property
    def is_open(self) -> bool:
        """True while mirroring is paused (open, or half-open waiting for its probe)."""
        return self.state is not BreakerState.CLOSED

    def configure(self, failures: int, pause: float) -> None:
        """New thresholds; the state is kept (an open breaker stays open, with the new pause)."""
        self.failures = failures
        self.pause = pause
        if self.state is BreakerState.CLOSED and self.consecutive >= failures:
            self._open(f"{self.consecutive} consecutive candidate errors")

    def allow(self) -> Admission | None:
        """May a request be mirrored now? None: no, the breaker holds it back."""
        if self.state is BreakerState.CLOSED:
            return Admission.NORMAL
        if self.state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self.pause:
                return None
            self._change(BreakerState.HALF_OPEN, "pause over")
        if self._probing:
            return None
        self._probing = True
        return Admission.PROBE

    def record(self, admission: Admission, ok: bool, generation: int | None = None) -> None:
        """The candidate's result for a request that ``allow`` admitted (in ``generation``)."""
        if generation is not None and generation != self.generation:
            return  # admitted before the breaker last opened
        if admission is Admission.PROBE:
            if self.state is not BreakerState.HALF_OPEN or not self._probing:
                return
            self._probing = False
            if ok:
                self.consecutive = 0
                self._change(BreakerState.CLOSED, "probe succeeded")
            else:
                self._open("probe failed")
            return
        if self.state is not BreakerState.CLOSED:
            return
        if ok:
            self.consecutive = 0
            return
        self.consecutive += 1
        if self.consecutive >= self.failures:
            self._open(f"{self.consecutive} consecutive candidate errors")

    def release(self, admission: Admission) -> None:
        """An admitted request never reached the candidate: a probe's turn passes on."""
        if admission is Admission.PROBE and self.state is BreakerState.HALF_OPEN:
            self._probing = False

    def _open(self, reason: str) -> None:
        self.generation += 1
        self._opened_at = self._clock()
        self._probing = False
        self._change(BreakerState.OPEN, reason)

    def _change(self, state: BreakerState, reason: str) -> None:
        previous, self.state = self.state, state
        if self._listener is not None and previous is not state:
            self._listener(state, reason)
