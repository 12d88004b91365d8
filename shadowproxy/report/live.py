"""The live report of a running proxy: feed it every logged record, serve it from the admin.

    view = LiveView()
    view.add(record)                                    # each record the proxy logs
    LiveReport(summary=view.summary, title=view.title)  # the admin's /report, /report.json

Not thread-safe: call everything from the event loop (or hold one lock around all calls).
"""

from __future__ import annotations

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

    def add(self, record: Mapping[str, Any]) -> None:
        """Count one log record (exchanges; other events are counted as such)."""
        self.aggregator.add(record)

    async def summary(self) -> Summary:
        """The summary, taken again when the last is a second old; in steps, so the event
        loop goes on serving while a large one is made."""
        now = self._clock()
        if self._summary is None or now - self._summary_at >= SUMMARY_MAX_AGE:
            self._summary = await summarise_stepwise(self.aggregator, sources=["live"])
            self._summary_at = now
        return self._summary
