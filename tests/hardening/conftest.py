"""Fixtures of the hardening tests: the real process (from the end-to-end tests) and a backend
that misbehaves on purpose."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from tests.e2e.conftest import start_proxy
from tests.hardening.faults import FaultyBackend

__all__ = ["faulty", "start_proxy"]


@pytest.fixture
async def faulty() -> AsyncIterator[FaultyBackend]:
    backend = FaultyBackend()
    await backend.start()
    yield backend
    with contextlib.suppress(Exception):
        await backend.stop()
