"""Reports and verdicts over discrepancy logs: terminal, JSON and HTML, files or live.

For the admin listener's live view (see ``live``)::

    view = LiveView()                    # one per process
    view.add(record)                     # every record the proxy logs (a dict), any event
    await view.summary()                 # -> Summary, at most a second old; the admin
                                         #    renders it (off the event loop) for GET /report

or the parts: ``Aggregator.add``, ``summarise(aggregator)``, ``render_html(summary,
refresh_seconds)`` and ``to_json(summary)``. None of it is thread-safe: call it from one
thread (the event loop), or hold a lock around every call.

The engine is a streaming pass: each line is decoded with orjson and folded into the same
bounded ``Aggregator`` the live view uses. One code path for files and live traffic keeps the
two views identical; memory stays constant (tens of MB) whatever the log size; stdin and
compressed logs stream. A million records take about five seconds on one core, within the
ten-second budget, so an embedded analytical engine (DuckDB) would add a large dependency and
a second implementation of the same rules for no needed gain.
"""

from shadowproxy.report.aggregate import Aggregator
from shadowproxy.report.html import render_html
from shadowproxy.report.jsonout import to_json
from shadowproxy.report.live import LiveView
from shadowproxy.report.read import ReportInputError, read_logs
from shadowproxy.report.summary import Summary, summarise
from shadowproxy.report.verdict import Bars, Verdict, evaluate

__all__ = [
    "Aggregator",
    "Bars",
    "LiveView",
    "ReportInputError",
    "Summary",
    "Verdict",
    "evaluate",
    "read_logs",
    "render_html",
    "summarise",
    "to_json",
]
