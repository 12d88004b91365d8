"""The live report of a running proxy: feed it every logged record, serve it from the admin.

    view = LiveView()
    view.add(record)                                    # each record the proxy logs
    LiveReport(summary=view.summary, title=view.title)  # the admin's /report, /report.json

Not thread-safe: call everything from the event loop (or hold one lock around all calls).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from shadowproxy.report.aggregate import Aggregator
from shadowproxy.report.summary import Summary, summarise_stepwise

SUMMARY_MAX_AGE = 1.0
"""Seconds a summary is reused, so that many viewers cost one summary a second."""


class LiveView:
    """A bounded ``Aggregator`` and its summary, taken at most once a second."""

    def __init__(
        self,
        *,
        title: str = "shadowproxy live report",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.aggregator = Aggregator()
        self.title = title
        self._clock = clock
        self._summary: Summary | None = None
        self._summary_at = 0.0
        self._taking: asyncio.Task[Summary] | None = None

    def add(self, record: Mapping[str, Any]) -> None:
        """Count one log record (exchanges; other events are counted as such)."""
        self.aggregator.add(record)

    async def summary(self) -> Summary:
        """The summary, taken again when the last is a second old; in steps, so the event
        loop goes on serving while a large one is made. Viewers who ask while one is being
        made wait for that one: each would otherwise make its own, all at once."""
        now = self._clock()
        if self._summary is not None and now - self._summary_at < SUMMARY_MAX_AGE:
            return self._summary
        if self._taking is None:
            self._taking = asyncio.ensure_future(self._take(now))
        # Shielded: a viewer who goes away does not cancel the summary the others wait for.
        return await asyncio.shield(self._taking)

    async def _take(self, now: float) -> Summary:
        try:
            self._summary = await summarise_stepwise(self.aggregator, sources=["live"])
            self._summary_at = now
            return self._summary
        finally:
            self._taking = None
