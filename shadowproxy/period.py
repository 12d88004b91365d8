"""A period a reload may change, for loops that act every so often (flush, save)."""

from __future__ import annotations

import asyncio


class Period:
    """``seconds`` between actions. A change takes effect at once: the wait under way
    starts again with the new length, rather than sitting out the rest of the old one."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._changed = asyncio.Event()

    def set(self, seconds: float) -> None:
        if seconds != self.seconds:
            self.seconds = seconds
            self._changed.set()

    async def wait(self) -> None:
        """Until a whole period has passed, of the length in force."""
        while True:
            try:
                async with asyncio.timeout(self.seconds):
                    await self._changed.wait()
            except TimeoutError:
                return
            self._changed.clear()
