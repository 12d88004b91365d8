"""The Comparer: inline fast path, real worker processes, the bounded queue, shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from shadowproxy.compare import Comparer, Comparison, matching
from shadowproxy.compare.fast import INLINE_ENGINE_MAX_BYTES, quick_compare
from shadowproxy.compare.pool import TIMED_OUT
from shadowproxy.config import DiffConfig

from .support import paths, response, rules

ENDPOINT = "GET /things/{id}"
# Large enough that a difference goes to a worker rather than being diffed inline.
PADDING = "x" * (INLINE_ENGINE_MAX_BYTES + 1)
SMALL_A = response({"a": 1, "b": [1, 2, 3], "padding": PADDING})
SMALL_B = response({"a": 2, "b": [1, 2, 3], "padding": PADDING})


def big_pair() -> tuple[Any, Any]:
    """About 5 MB each, differing: a worker needs a few hundred milliseconds for it."""
    records = [{"id": i, "name": f"record {i}", "values": list(range(20))} for i in range(25_000)]
    changed = [dict(r, name="renamed") if i % 1000 == 0 else r for i, r in enumerate(records)]
    return response(records), response(changed)


def nested_pair(depth: int, count: int) -> tuple[Any, Any]:
    """``count`` arrays each nested ``depth`` deep, differing at the bottom: under an
    ``unordered: ["/**"]`` rule each level matches its elements again, so the diff takes time
    far beyond its size (seconds for 16 KB)."""

    def chains(leaf: str) -> bytes:
        chain = "[" * depth + leaf + ",0]" * depth
        return ("[" + ",".join([chain] * count) + "]").encode()

    return response(chains("1")), response(chains("2"))


def config(**diff: Any) -> DiffConfig:
    return DiffConfig.model_validate(diff)


@pytest.fixture
async def comparer() -> AsyncIterator[Comparer]:
    started = Comparer(config(workers=1, max_queue=1))
    await started.start()
    yield started
    await started.close()


async def let_tasks_submit(comparer: Comparer, count: int) -> None:
    """Yield once: tasks created before this run up to their wait for a worker."""
    await asyncio.sleep(0)
    assert comparer.queued == count


def worker_processes(comparer: Comparer) -> list[Any]:
    executor = comparer._executor
    assert isinstance(executor, ProcessPoolExecutor)
    return list((executor._processes or {}).values())


async def test_differences_are_computed_in_a_worker_process(comparer: Comparer) -> None:
    result = await comparer.compare(ENDPOINT, SMALL_A, SMALL_B)
    assert result is not None
    assert paths(result) == {("/a", "changed")}
    assert all(p.pid != os.getpid() for p in worker_processes(comparer))


async def test_fast_path_answers_inline(comparer: Comparer) -> None:
    a = response(b'{"a": 1, "b": [1, 2, 3]}')
    reordered = response(b'{"b": [1, 2, 3], "a": 1}')
    assert await comparer.compare(ENDPOINT, a, reordered) is matching("json")
    small_difference = await comparer.compare(ENDPOINT, a, response(b'{"a": 2, "b": [1, 2, 3]}'))
    assert small_difference is not None
    assert paths(small_difference) == {("/a", "changed")}
    assert comparer.queued == 0


async def test_full_queue_skips_and_returns_none(comparer: Comparer) -> None:
    first = asyncio.create_task(comparer.compare(ENDPOINT, SMALL_A, SMALL_B))
    await let_tasks_submit(comparer, 1)
    # max_queue is 1 and the first comparison cannot leave the queue before this task yields.
    assert await comparer.compare(ENDPOINT, SMALL_B, SMALL_A) is None
    assert await comparer.compare(ENDPOINT, SMALL_A, SMALL_A) is matching(
        "json"
    )  # inline still works
    result = await first
    assert result is not None
    assert result.total == 1


async def test_close_does_not_hang_on_a_busy_worker() -> None:
    comparer = Comparer(config(workers=1, max_queue=4))
    await comparer.start()
    big_a, big_b = big_pair()
    running = [asyncio.create_task(comparer.compare(ENDPOINT, big_a, big_b)) for _ in range(3)]
    await let_tasks_submit(comparer, 3)
    processes = worker_processes(comparer)
    started = time.monotonic()
    await comparer.close(grace=0)
    assert time.monotonic() - started < 5
    assert await asyncio.gather(*running) == [None, None, None]
    assert not any(p.is_alive() for p in processes)
    assert await comparer.compare(ENDPOINT, SMALL_A, SMALL_B) is None  # closed: skipped


async def test_close_waits_for_running_work_within_grace() -> None:
    comparer = Comparer(config(workers=1))
    await comparer.start()
    task = asyncio.create_task(comparer.compare(ENDPOINT, SMALL_A, SMALL_B))
    await let_tasks_submit(comparer, 1)
    await comparer.close(grace=30)
    result = await task
    assert isinstance(result, Comparison)
    assert result.total == 1


async def test_thread_mode() -> None:
    comparer = Comparer(config(workers=0))
    await comparer.start()
    try:
        result = await comparer.compare(ENDPOINT, SMALL_A, SMALL_B)
        assert result is not None
        assert result.total == 1
    finally:
        await comparer.close()


async def test_update_swaps_rules_and_pool(comparer: Comparer) -> None:
    comparer.update(config(workers=1, ignore=["/a"]))
    assert await comparer.compare(ENDPOINT, SMALL_A, SMALL_B) is matching("json")
    comparer.update(config(workers=2, max_queue=8))
    result = await comparer.compare(ENDPOINT, SMALL_A, SMALL_B)
    assert result is not None
    assert result.total == 1
    with pytest.raises(ValueError, match="endpoints"):
        comparer.update(config(endpoints=[{"match": "no-slash"}]))
    assert comparer.rulebook.diff.max_queue == 8  # the old rules stay


async def test_a_dead_worker_is_replaced(comparer: Comparer) -> None:
    (process,) = worker_processes(comparer)
    os.kill(process.pid, signal.SIGKILL)
    await asyncio.to_thread(process.join)
    first = await comparer.compare(ENDPOINT, SMALL_A, SMALL_B)
    assert first is None or first.total == 1
    second = await comparer.compare(ENDPOINT, SMALL_A, SMALL_B)
    assert second is not None
    assert second.total == 1


async def test_compare_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="start"):
        await Comparer(config()).compare(ENDPOINT, SMALL_A, SMALL_B)


async def test_a_comparison_past_the_time_limit_is_compared_as_bytes() -> None:
    comparer = Comparer(config(workers=1, unordered=["/**"]), time_limit=0.2)
    await comparer.start()
    try:
        slow_a, slow_b = nested_pair(200, 200)  # minutes without a limit
        result = await comparer.compare(ENDPOINT, slow_a, slow_b)
        assert result is not None
        assert (result.body_kind, result.total, result.notes) == ("binary", 1, (TIMED_OUT,))
        # The worker is free again, for what comes next.
        after = await comparer.compare(ENDPOINT, SMALL_A, SMALL_B)
        assert after is not None
        assert paths(after) == {("/a", "changed")}
    finally:
        await comparer.close()


async def test_unordered_arrays_at_any_depth_are_not_diffed_inline(comparer: Comparer) -> None:
    # Small, but seconds to diff: the event loop would stall.
    deep_a, deep_b = nested_pair(200, 20)
    assert len(deep_a.body) <= INLINE_ENGINE_MAX_BYTES
    assert quick_compare(deep_a, deep_b, rules(unordered=["/**"])) is None
    a, b = response({"xs": [[1], [2]]}), response({"xs": [[3], [1]]})
    flat = quick_compare(a, b, rules(unordered=["/xs"]))  # nested only as deep as written
    assert flat is not None
    assert paths(flat) == {("/xs/1/0", "changed")}


async def test_close_stops_the_workers_of_a_pool_replaced_on_reload() -> None:
    comparer = Comparer(config(workers=1, max_queue=4, unordered=["/**"]))
    await comparer.start()
    slow_a, slow_b = nested_pair(200, 200)
    running = asyncio.create_task(comparer.compare(ENDPOINT, slow_a, slow_b))
    await let_tasks_submit(comparer, 1)
    old = worker_processes(comparer)
    comparer.update(config(workers=2, max_queue=4, unordered=["/**"]))
    # Else the interpreter's exit would wait for the old pool's comparison to finish.
    await comparer.close(grace=0)
    assert not any(p.is_alive() for p in old)
    assert await running is None
