"""``mirror.max_rps`` shared by worker processes in proportion to what each one is asked.

The kernel spreads connections, not requests, over the workers: behind an ingress holding a
few keep-alive connections, one worker may get most of the traffic. An even split of the rate
would then let it mirror only its part while the others' parts go unused. Instead each worker
says, in a small file they all map, how many mirrors it was asked for lately, and takes its
share of the rate by max-min fairness over what all of them asked for.

Nothing here starts a timer: a worker looks at the board when a request asks to be mirrored
and ``REBALANCE_INTERVAL`` has passed, against the clock it is given. Each takes its share
from what it saw then, so while traffic moves from one worker to another the shares may add up
to more than the total, for one interval at most.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections.abc import Sequence
from pathlib import Path

from shadowproxy.protection import Clock, TokenBucket

REBALANCE_INTERVAL = 0.5
"""Seconds between a worker's looks at the board."""
STALE_AFTER = 2.0
"""A slot not written for this long is a worker with nothing to mirror (or not running),
unless its share is so small that its bucket takes longer to fill (see ``DemandBoard.say``)."""
IDLE_FLOOR = 0.1
"""Part of an even split that any worker keeps, so a worker whose traffic has just begun
mirrors some of it before its next look at the board."""

_SLOT = struct.Struct("=dd")  # demand per second, until when others count it (CLOCK_MONOTONIC)


def fair_shares(total: float, demands: Sequence[float]) -> list[float]:
    """``total`` split by max-min fairness: nobody gets more than it asks for while another
    gets less than it asks for; what nobody asks for is split evenly. Sums to ``total``."""
    count = len(demands)
    shares = [0.0] * count
    left = total
    for served, index in enumerate(sorted(range(count), key=demands.__getitem__)):
        shares[index] = min(demands[index], left / (count - served))
        left -= shares[index]
    if left > 0:
        shares = [share + left / count for share in shares]
    return shares


class DemandBoard:
    """One slot per worker in a shared file. A worker writes only its own slot, so no lock
    is needed; a read that races a write skews one rebalance at most."""

    def __init__(self, path: Path, workers: int, index: int) -> None:
        if not 0 <= index < workers:
            raise ValueError(f"worker index {index} is not below {workers}")
        self.workers = workers
        self.index = index
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, _SLOT.size * workers)
        finally:
            os.close(fd)

    @staticmethod
    def create(path: Path, workers: int) -> None:
        """The supervisor's part: a file of empty slots, before any worker starts."""
        path.write_bytes(bytes(_SLOT.size * workers))

    def say(self, demand: float, share: float, now: float) -> None:
        """This worker's demand, counted by the others until its bucket would be full.

        Until then it saves tokens at ``share`` and spends them at its next request, however
        late that comes: were the others to take its part sooner, the sum would pass the
        total. A bucket holds ``max(1, share)``, so a share below one per ``STALE_AFTER``
        (a small ``max_rps`` over many workers) takes longer than that to fill."""
        counts_for = max(STALE_AFTER, 1 / share)
        _SLOT.pack_into(self._map, _SLOT.size * self.index, demand, now + counts_for)

    def demands(self, now: float) -> list[float]:
        """Each worker's demand; 0 for a slot no longer counted, or never written."""
        out = []
        for i in range(self.workers):
            demand, until = _SLOT.unpack_from(self._map, _SLOT.size * i)
            out.append(demand if now <= until else 0.0)
        return out

    def close(self) -> None:
        self._map.close()


class SharedRate:
    """This process's part of ``total`` mirrors per second: the even split of ``workers``
    without a board, else a share rebalanced from the board."""

    __slots__ = ("_asked", "_board", "_bucket", "_clock", "_since", "_total", "_workers")

    def __init__(
        self,
        total: float,
        *,
        workers: int = 1,
        board: DemandBoard | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._total = total
        self._workers = board.workers if board is not None else max(1, workers)
        self._board = board
        self._clock = clock
        self._bucket = TokenBucket(total / self._workers, clock=clock)
        self._asked = 0
        self._since = clock()

    @property
    def rate(self) -> float:
        return self._bucket.rate

    def take(self) -> bool:
        """One mirror now, if this process's share allows it."""
        if self._board is not None:
            self._asked += 1
            now = self._clock()
            if now - self._since >= REBALANCE_INTERVAL:
                self._rebalance(now)
        return self._bucket.take()

    def set_total(self, total: float) -> None:
        """A reloaded ``max_rps``: the share keeps its proportion until the next look."""
        self._bucket.set_rate(self._bucket.rate * total / self._total)
        self._total = total

    def _rebalance(self, now: float) -> None:
        assert self._board is not None
        board = self._board
        demands = board.demands(now)
        demands[board.index] = demand = self._asked / (now - self._since)
        self._asked, self._since = 0, now
        floor = self._total / self._workers * IDLE_FLOOR
        share = fair_shares(self._total, [max(floor, d) for d in demands])[board.index]
        board.say(demand, share, now)
        self._bucket.set_rate(share)
