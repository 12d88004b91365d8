"""How far a replay is: a live line on a terminal, plain periodic lines otherwise.

Both read `ReplayStats` on a timer, never per request, so they cost nothing on the hot path.
The rate is measured over the last few seconds; the ETA divides the entries still to read by
it (unknown when the number of entries is, as on stdin).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import deque
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from shadowproxy.replay.engine import ReplayStats

WINDOW_SECONDS = 5.0
TERMINAL_REFRESH = 0.25


def _duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class _Window:
    """Entries per second over the last ``WINDOW_SECONDS``."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int, int]] = deque()

    def add(self, now: float, seen: int, completed: int) -> tuple[float, float]:
        """(entries read per second, requests completed per second)."""
        samples = self._samples
        samples.append((now, seen, completed))
        while len(samples) > 2 and now - samples[0][0] > WINDOW_SECONDS:
            samples.popleft()
        then, seen_then, completed_then = samples[0]
        span = now - then
        if span <= 0:
            return 0.0, 0.0
        return (seen - seen_then) / span, (completed - completed_then) / span


def describe(stats: ReplayStats, entry_rate: float, request_rate: float) -> dict[str, Any]:
    match = stats.match_rate
    remaining = stats.remaining
    if remaining is None or entry_rate <= 0:
        eta = "--:--:--" if remaining else _duration(0)
    else:
        eta = _duration(remaining / entry_rate)
    total = f"/{stats.total:,}" if stats.total is not None else ""
    return {
        "done": f"{stats.seen:,}{total}",
        "rate": f"{request_rate:,.0f} req/s",
        "eta": f"ETA {eta}",
        "match": "match --" if match is None else f"match {match:.2%}",
        "errors": f"{stats.mismatched:,} mismatch, {stats.errors:,} error",
    }


class ProgressDisplay:
    """Started and stopped around a replay; ``terminal`` picks the live display."""

    def __init__(
        self,
        stats: ReplayStats,
        *,
        terminal: bool,
        interval: float = 10.0,
        stream: IO[str] | None = None,
    ) -> None:
        self._stats = stats
        self._terminal = terminal
        self._interval = interval
        self._stream = stream or sys.stderr
        self._task: asyncio.Task[None] | None = None
        self._window = _Window()
        self._progress: Progress | None = None

    def start(self) -> None:
        if self._terminal:
            self._progress = Progress(
                TextColumn("replay"),
                BarColumn(),
                TextColumn("{task.fields[done]}"),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[eta]}"),
                TextColumn("{task.fields[match]}"),
                TextColumn("[dim]{task.fields[errors]}"),
                console=Console(file=self._stream),
                auto_refresh=False,
                transient=False,
            )
            self._progress.add_task(
                "replay", total=self._stats.total, **self._fields(time.monotonic())
            )
            self._progress.start()
        self._task = asyncio.get_running_loop().create_task(self._tick())

    def _fields(self, now: float) -> dict[str, Any]:
        stats = self._stats
        entry_rate, request_rate = self._window.add(now, stats.seen, stats.completed)
        return describe(stats, entry_rate, request_rate)

    async def _tick(self) -> None:
        period = TERMINAL_REFRESH if self._terminal else self._interval
        while True:
            await asyncio.sleep(period)
            self._show()

    def _show(self) -> None:
        fields = self._fields(time.monotonic())
        if self._progress is not None:
            task = self._progress.task_ids[0]
            self._progress.update(task, completed=self._stats.seen, **fields)
            self._progress.refresh()
        else:
            line = ", ".join(
                [fields["done"] + " entries", fields["rate"], fields["match"], fields["eta"]]
            )
            print(f"shadowproxy replay: {line}", file=self._stream, flush=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._progress is not None:
            task = self._progress.task_ids[0]
            self._progress.update(
                task, completed=self._stats.seen, **self._fields(time.monotonic())
            )
            self._progress.refresh()
            self._progress.stop()
            self._progress = None
