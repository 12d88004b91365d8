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
from shadowproxy.report.html import render_html
from shadowproxy.report.jsonout import to_json
from shadowproxy.report.summary import Summary, summarise

SUMMARY_MAX_AGE = 1.0
"""Seconds a summary is reused, so that many viewers cost one summary a second."""


class LiveView:
    """A bounded ``Aggregator`` with the two renderings the admin listener serves."""

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

    def summary(self) -> Summary:
        now = self._clock()
        if self._summary is None or now - self._summary_at >= SUMMARY_MAX_AGE:
            self._summary = summarise(self.aggregator, sources=["live"])
            self._summary_at = now
        return self._summary

    def html(self, refresh_seconds: int | None = None) -> str:
        """The HTML page; it reloads itself every ``refresh_seconds`` when given."""
        return render_html(self.summary(), refresh_seconds, title=self.title)

    def json(self) -> bytes:
        """The JSON report (schema in ``shadowproxy.report.jsonout``)."""
        return to_json(self.summary())
