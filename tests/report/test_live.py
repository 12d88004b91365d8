import orjson

from shadowproxy.admin import LiveReport
from shadowproxy.report.live import SUMMARY_MAX_AGE, LiveView
from shadowproxy.report.synthetic import exchange_record


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_live_view_serves_html_and_json_and_reuses_a_fresh_summary() -> None:
    clock = Clock()
    view = LiveView(clock=clock)
    report = LiveReport(summary=view.summary, title=view.title)
    view.add(exchange_record())
    view.add({"event": "config_reloaded"})
    assert orjson.loads(await report.json())["overall"]["compared"] == 1

    view.add(exchange_record(outcome="mismatch"))
    assert orjson.loads(await report.json())["overall"]["compared"] == 1  # within SUMMARY_MAX_AGE
    clock.now += SUMMARY_MAX_AGE
    data = orjson.loads(await report.json())
    assert data["overall"]["compared"] == 2
    assert data["input"]["other_events"] == 1
    assert data["input"]["sources"] == ["live"]

    page = await report.html(5)
    assert '<body data-refresh="5">' in page
    assert "<title>shadowproxy live report</title>" in page
    assert "data-refresh" not in await report.html(None)
