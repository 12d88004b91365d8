"""`Comparer`: the fast path inline on the event loop, the detailed engine in workers.

What `fast.quick_compare` settles (equal bodies, small differing JSON, form and binary
bodies, any pair of small bodies its `BodyMemo` has seen) never leaves the event loop. The
rest waits for a worker in a bounded queue (``diff.max_queue``, counting those queued and
those running); when it is full the comparison is skipped and `compare` returns None for the
caller to count. Workers are processes (``diff.workers``), or one thread when
``diff.workers`` is 0. A worker process spends at most `TIME_LIMIT` on one comparison.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from concurrent.futures import (
    BrokenExecutor,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
)
from typing import Any

import structlog

from shadowproxy.compare import engine
from shadowproxy.compare.binary import compare_binary
from shadowproxy.compare.collect import Collector
from shadowproxy.compare.fast import quick_compare
from shadowproxy.compare.media import BodyKind
from shadowproxy.compare.memo import BodyMemo
from shadowproxy.compare.model import Comparison, matching
from shadowproxy.compare.rules import CompiledRules, RuleBook
from shadowproxy.config import DiffConfig
from shadowproxy.exchange import Response

CLOSE_GRACE = 1.0
"""Seconds `close` lets pending comparisons finish before worker processes are terminated."""
JOIN_TIMEOUT = 2.0
"""Seconds to wait for terminated workers to exit; they are killed after that."""
TIME_LIMIT = 10.0
"""Seconds a worker process may spend on one comparison (a 40 MB document needs a few);
past it the bodies are compared as bytes, with a note. Without it one pathological pair
(deeply nested arrays under an ``unordered: ["/**"]`` rule) would hold the worker, and every
comparison queued behind it, for minutes."""
TIMED_OUT = "compare_timed_out"
"""The note on a comparison cut at `TIME_LIMIT`."""

log = structlog.get_logger(__name__)


class _OutOfTime(BaseException):
    """Raised in a worker process by SIGALRM, when `run_engine`'s time is up."""


def _out_of_time(signum: int, frame: object) -> None:
    raise _OutOfTime


def _worker_init() -> None:
    # A Ctrl-C goes to the whole process group; only the parent should act on it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _out_of_time)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(
            target=_exit_when_gone, args=(parent.sentinel,), name="parent-watch", daemon=True
        ).start()


def _exit_when_gone(parent_sentinel: int) -> None:
    """Exit when the proxy process does, however it ends.

    The pool tells its workers nothing when its process is killed (SIGKILL, the OOM killer):
    they would wait for work forever, with the forkserver they keep alive, both holding the
    proxy's standard error open, and a supervisor restarting the proxy would add more.
    """
    multiprocessing.connection.wait([parent_sentinel])
    os._exit(0)


def _ready() -> bool:
    return True


def run_engine(
    primary: Response, other: Response, rules: CompiledRules, time_limit: float = TIME_LIMIT
) -> Comparison:
    """`engine.compare` as a worker process runs it: within ``time_limit`` seconds, and
    without the cyclic garbage collector.

    Parsing a large document allocates millions of objects, and every collection would walk
    them all, doubling the time of a 5 MB diff. Parsed JSON holds no reference cycles, so
    reference counting frees it anyway; the collector is back on before the next task.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, time_limit)
            return engine.compare(primary, other, rules)
        finally:
            # Inside the outer try: an alarm that fires just before it is disarmed is caught.
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _OutOfTime:
        return as_bytes(primary, other, rules, TIMED_OUT)
    finally:
        if enabled:
            gc.enable()


def as_bytes(primary: Response, other: Response, rules: CompiledRules, note: str) -> Comparison:
    """Status, headers, and the bodies by size and SHA-256, with ``note`` saying why: what
    is known when the detailed comparison could not be finished."""
    out = Collector(rules.max_differences)
    engine.compare_head(primary, other, rules, out)
    compare_binary(primary.body, other.body, out)
    out.note(note)
    return engine.result(out, BodyKind.BINARY)


def _mp_context() -> Any:
    # fork is unsafe in a process with threads (the event loop's executors); forkserver forks
    # clean workers quickly, spawn is the portable fallback.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _new_executor(workers: int) -> Executor:
    if workers == 0:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadowproxy-compare")
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=_mp_context(), initializer=_worker_init
    )


class Comparer:
    """Compares mirrored responses without blocking the event loop for long."""

    def __init__(self, diff: DiffConfig, time_limit: float = TIME_LIMIT) -> None:
        self._diff = diff
        self._time_limit = time_limit
        self._book = RuleBook.from_config(diff)
        self._memo = BodyMemo()
        self._executor: Executor | None = None
        self._retired: list[Any] = []
        """Worker processes of pools replaced on reload, still finishing their work: `close`
        stops them too, or the interpreter's exit would wait for them."""
        self._pending: set[asyncio.Future[Comparison]] = set()
        self._closed = False

    @property
    def rulebook(self) -> RuleBook:
        return self._book

    @property
    def memo(self) -> BodyMemo:
        return self._memo

    @property
    def queued(self) -> int:
        """Comparisons handed to workers and not finished yet."""
        return len(self._pending)

    async def start(self) -> None:
        """Start the workers and wait until each can take work, so the first comparisons do
        not pay for process start-up."""
        if self._executor is not None:
            return
        self._closed = False
        self._executor = _new_executor(self._diff.workers)
        await self._warm(self._executor, self._diff.workers)

    @staticmethod
    async def _warm(executor: Executor, workers: int) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(executor, _ready) for _ in range(max(workers, 1)))
        )

    def update(self, diff: DiffConfig) -> None:
        """Hot reload: later comparisons use the new rules; running ones finish with theirs.

        A change of ``diff.workers`` replaces the pool; the old one finishes its work first.
        Raises ValueError (and keeps the old rules) when the new rules do not compile.
        """
        book = RuleBook.from_config(diff)
        old_workers = self._diff.workers
        self._book, self._diff = book, diff  # one assignment each; compare reads _book once
        self._memo = BodyMemo()  # filled under the old rules
        if self._executor is not None and diff.workers != old_workers:
            old, self._executor = self._executor, _new_executor(diff.workers)
            self._retired = [p for p in self._retired if p.is_alive()] + _processes(old)
            old.shutdown(wait=False)

    async def compare(self, endpoint: str, primary: Response, other: Response) -> Comparison | None:
        """The comparison; None when it was skipped because the queue was full or the
        comparer is closing."""
        rules = self._book.for_endpoint(endpoint)
        quick = quick_compare(primary, other, rules, self._memo)
        if quick is not None:
            return quick
        executor = self._executor
        if executor is None:
            if self._closed:
                return None
            raise RuntimeError("Comparer.start() must be awaited before compare()")
        if len(self._pending) >= self._diff.max_queue:
            return None
        try:
            work = self._submit(executor, primary, other, rules)
        except BrokenExecutor:
            # A worker died while idle; the comparison in hand is not to blame, so it gets
            # one try on a fresh pool.
            executor = self._replace_broken(executor)
            try:
                work = self._submit(executor, primary, other, rules)
            except RuntimeError:
                return None
        except RuntimeError:  # shut down between the check above and now
            return None
        waiter = asyncio.wrap_future(work)
        self._pending.add(waiter)
        try:
            result = await waiter
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if work.cancelled() and self._closed and (task is None or not task.cancelling()):
                return None  # dropped from the queue by close()
            raise
        except BrokenExecutor:
            self._replace_broken(executor)
            return None
        finally:
            self._pending.discard(waiter)
        # A match crossed a process boundary as a copy: share the one object of its kind.
        match = matching(result.body_kind)
        return match if result == match else result

    def _submit(
        self, executor: Executor, primary: Response, other: Response, rules: CompiledRules
    ) -> Future[Comparison]:
        # gc.disable() is process-wide and signals reach only a main thread: only a worker
        # process may run without the collector, and within a time limit.
        if isinstance(executor, ProcessPoolExecutor):
            return executor.submit(run_engine, primary, other, rules, self._time_limit)
        return executor.submit(engine.compare, primary, other, rules)

    def _replace_broken(self, broken: Executor) -> Executor:
        """A worker died (killed, out of memory): its pool is unusable, start another."""
        if self._executor is broken and not self._closed:
            log.warning("compare_pool_broken", workers=self._diff.workers)
            self._executor = _new_executor(self._diff.workers)
            broken.shutdown(wait=False, cancel_futures=True)
        return self._executor or broken

    async def close(self, grace: float = CLOSE_GRACE) -> None:
        """Give pending comparisons ``grace`` seconds, then drop the queued ones and stop the
        workers; those comparisons return None. Returns promptly even when a worker is stuck
        (a thread, when ``diff.workers`` is 0, finishes its comparison in the background)."""
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=grace)
        processes = _processes(executor) + self._retired
        self._retired = []
        executor.shutdown(wait=False, cancel_futures=True)
        if processes:
            await asyncio.to_thread(_stop_processes, processes)


def _processes(executor: Executor) -> list[Any]:
    """The worker processes of a process pool; none for the thread."""
    if isinstance(executor, ProcessPoolExecutor):
        return list((executor._processes or {}).values())
    return []


def _stop_processes(processes: list[Any]) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + JOIN_TIMEOUT
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(JOIN_TIMEOUT)
