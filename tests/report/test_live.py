import asyncio
from collections.abc import Sequence
from unittest import mock

import orjson

from shadowproxy.admin import LiveReport
from shadowproxy.report import live
from shadowproxy.report.aggregate import Aggregator
from shadowproxy.report.live import SUMMARY_MAX_AGE, LiveView
from shadowproxy.report.summary import SUMMARY_STEP, Summary, summarise, summarise_stepwise
from shadowproxy.report.synthetic import exchange_record
from shadowproxy.report.timestamps import parse_ts


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


async def test_a_large_summary_lets_the_event_loop_serve_while_it_is_made() -> None:
    view = LiveView()
    for i in range(300):
        view.add(exchange_record(endpoint=f"GET /e{i}/{{id}}", outcome="mismatch"))
    turns = 0
    done = False

    async def other_requests() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    ticker = asyncio.ensure_future(other_requests())
    await asyncio.sleep(0)  # let it start
    summary = await view.summary()
    done = True
    await ticker
    assert turns >= 300 // SUMMARY_STEP  # it ran between the steps, not only after
    assert summary == summarise(view.aggregator, sources=["live"], now=summary_time(summary))
    assert len(summary.endpoints) == 300


async def test_viewers_asking_at_once_share_one_summary() -> None:
    view = LiveView()
    for i in range(100):
        view.add(exchange_record(endpoint=f"GET /e{i}/{{id}}"))
    made = 0

    async def counted(aggregator: Aggregator, *, sources: Sequence[str] = ()) -> Summary:
        nonlocal made
        made += 1
        return await summarise_stepwise(aggregator, sources=sources)

    with mock.patch.object(live, "summarise_stepwise", counted):
        viewers = [asyncio.ensure_future(view.summary()) for _ in range(20)]
        await asyncio.sleep(0)
        viewers[0].cancel()  # one went away: the others still get the summary
        summaries = await asyncio.gather(*viewers[1:])
    assert made == 1
    assert all(summary is summaries[0] for summary in summaries)
    assert len(summaries[0].endpoints) == 100


def summary_time(summary: Summary) -> float:
    return parse_ts(summary.generated_at)
