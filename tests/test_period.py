"""A period a reload may change."""

from __future__ import annotations

import asyncio

from shadowproxy.period import Period


async def test_a_shorter_period_ends_the_wait_under_way_early() -> None:
    period = Period(3600.0)
    waiting = asyncio.ensure_future(period.wait())
    await asyncio.sleep(0)  # the wait has begun, under the hour-long period
    period.set(0.01)
    async with asyncio.timeout(5):  # not the rest of the hour
        await waiting


async def test_setting_the_same_length_changes_nothing() -> None:
    period = Period(0.01)
    period.set(0.01)
    async with asyncio.timeout(5):
        await period.wait()
    assert period.seconds == 0.01
