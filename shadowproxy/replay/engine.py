"""The replay engine: captured requests sent again, answers compared, records produced.

Two modes. Against the recording (only a candidate): each request goes to the candidate and
its answer is compared with the primary's recorded response. Live (a primary, optionally a
secondary): each request goes to every backend at once and the live answers are compared, as
the proxy compares them; with a secondary, noise is told apart by the same model the proxy
uses.

Entries stream in; at most ``concurrency`` requests are in flight, so memory does not depend
on the size of the capture. Requests leave at the pace of a `Pacer`. Every replayed request
carries ``X-Shadow-Request: 1``, like a mirrored one; unsafe methods are skipped unless
allowed. Each compared exchange becomes a discrepancy-log record (``build_record``), handed
to ``on_record``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from multidict import CIMultiDict

from shadowproxy.compare import Comparer
from shadowproxy.compare.model import Comparison, Difference, Where
from shadowproxy.config import SAFE_METHODS, Backend, DiffConfig
from shadowproxy.endpoints import endpoint_of
from shadowproxy.exchange import Exchange, Failure, FailureKind, RequestSnapshot, Response
from shadowproxy.har import InvalidEntry, Item, ReadCounts, Recorded, parse_entry
from shadowproxy.headers import HOP_BY_HOP, REDACTED, mirror_request_headers, new_request_id
from shadowproxy.noise import NoiseModel, gives_evidence, without_noise
from shadowproxy.pool import Pool, Timing
from shadowproxy.record import DEFAULT_QUERY_REDACTOR, QueryRedactor, build_record
from shadowproxy.redact import Redactor
from shadowproxy.upstream import fetch, make_pool

_NOT_REPLAYED_HEADERS = HOP_BY_HOP | {"content-length"}


class Skip:
    """Why an entry was not replayed; the labels of ``ReplayStats.skipped``."""

    UNSAFE = "unsafe method (use --allow-unsafe)"
    NO_RESPONSE = "no recorded response to compare with"
    PRIMARY_FAILED = "the primary failed"
    COMPARE = "comparison skipped"
    FAILED = "could not be replayed"
    INTERRUPTED = "interrupted under way"


class Pacer:
    """When each request is due, on the monotonic clock.

    ``rate``: that many requests a second, evenly spaced from the first. ``speed``: the
    recorded spacing divided by ``speed`` (2 is twice as fast); each capture file keeps its own
    timeline, so files are replayed one after the other, and an entry without a time goes at
    once. Neither: as fast as the in-flight bound allows. A pacer that falls behind does not
    skip requests; it sends them as soon as it can.
    """

    def __init__(
        self,
        rate: float | None = None,
        speed: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate is not None and speed is not None:
            raise ValueError("give a rate or a speed, not both")
        self.rate = rate
        self.speed = speed
        self._clock = clock
        self._count = 0
        self._start: float | None = None
        self._source: str | None = None
        self._origin: tuple[float, float] | None = None

    def due(self, source: str, recorded_at: float | None) -> float | None:
        """The monotonic time the next request is due; None: now."""
        if self.rate is not None:
            if self._start is None:
                self._start = self._clock()
            due = self._start + self._count / self.rate
            self._count += 1
            return due
        if self.speed is None or recorded_at is None:
            return None
        if source != self._source or self._origin is None:
            self._source = source
            self._origin = (self._clock(), recorded_at)
        started, first = self._origin
        return started + (recorded_at - first) / self.speed


@dataclass
class ReplayStats:
    """Running totals, read by the progress display while the replay goes on."""

    total: int | None = None
    """Entries in the captures when known in advance, for the ETA."""
    seen: int = 0
    """Entries taken from the captures, replayed or not."""
    sent: int = 0
    completed: int = 0
    matched: int = 0
    mismatched: int = 0
    errors: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    read: ReadCounts = field(default_factory=ReadCounts)

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        elapsed = self.elapsed
        return self.completed / elapsed if elapsed > 0 else 0.0

    @property
    def match_rate(self) -> float | None:
        return self.matched / self.completed if self.completed else None

    @property
    def remaining(self) -> int | None:
        return None if self.total is None else max(self.total - self.seen, 0)


@dataclass(frozen=True, slots=True)
class Targets:
    candidate: Backend
    primary: Backend | None = None
    """Set: live mode, both backends are asked; unset: compared with the recording."""
    secondary: Backend | None = None


def request_headers(
    recorded: Sequence[tuple[str, str]], overrides: Sequence[tuple[str, str]] = ()
) -> CIMultiDict[str]:
    """The headers a replayed request is sent with: as recorded, without hop-by-hop ones,
    Content-Length (set from the body) and redacted values, then ``overrides`` replacing
    headers of the same name (test credentials, a Host)."""
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in recorded:
        if name.lower() in _NOT_REPLAYED_HEADERS or value == REDACTED:
            continue
        headers.add(name, value)
    for name, _ in overrides:
        headers.popall(name, None)
    for name, value in overrides:
        headers.add(name, value)
    return headers


def _under(path: str, places: frozenset[str]) -> bool:
    if path in places:
        return True
    return any(path.startswith(place + "/") for place in places)


def without_redacted(comparison: Comparison, places: frozenset[str]) -> Comparison:
    """The comparison without body differences where the recorded body was redacted: the
    recording holds ``[redacted]`` there, not what the primary sent."""
    if not places or not comparison.differences:
        return comparison
    kept = tuple(
        d for d in comparison.differences if not (d.where is Where.BODY and _under(d.path, places))
    )
    removed = len(comparison.differences) - len(kept)
    if not removed:
        return comparison
    return replace(comparison, differences=kept, total=max(comparison.total - removed, 0))


class Replayer:
    def __init__(
        self,
        targets: Targets,
        *,
        diff: DiffConfig,
        on_record: Callable[[dict[str, Any]], None],
        concurrency: int = 16,
        pacer: Pacer | None = None,
        allow_unsafe: bool = False,
        headers: Sequence[tuple[str, str]] = (),
        redactor: Redactor | None = None,
        noise: NoiseModel | None = None,
        stats: ReplayStats | None = None,
        output_room: Callable[[], Awaitable[None]] | None = None,
        query: QueryRedactor = DEFAULT_QUERY_REDACTOR,
    ) -> None:
        """``output_room`` is awaited before each request is sent: a log whose reader is
        behind holds the replay back rather than losing records. ``query`` hides
        ``log.redact_query`` values in the records and in what the summary says."""
        self.targets = targets
        # Every request in flight may wait for a comparison: none must be skipped for a full
        # queue, as the proxy would under load.
        self._diff = diff.model_copy(update={"max_queue": max(diff.max_queue, concurrency)})
        self._on_record = on_record
        self._concurrency = concurrency
        self._pacer = pacer or Pacer()
        self._allow_unsafe = allow_unsafe
        self._overrides = tuple(headers)
        self._redactor = redactor
        self._query = query
        self._noise = noise if targets.secondary is not None else None
        self.stats = stats or ReplayStats()
        self._output_room = output_room
        self._stop = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._pools: dict[str, Pool] = {}
        self._comparer: Comparer | None = None

    def stop(self) -> None:
        """Send nothing more; requests under way finish (on Ctrl-C). Called again (a second
        Ctrl-C), it cancels them too; they are counted as interrupted."""
        if self._stop.is_set():
            for task in self._in_flight:
                task.cancel()
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet recorded."""
        return len(self._in_flight)

    async def run(self, items: Iterable[Item]) -> ReplayStats:
        """Replay every item; returns the totals once the last answer is recorded."""
        stats = self.stats
        stats.started = time.monotonic()
        comparer = self._comparer = Comparer(self._diff)
        await comparer.start()
        for name, backend in (
            ("candidate", self.targets.candidate),
            ("primary", self.targets.primary),
            ("secondary", self.targets.secondary),
        ):
            if backend is not None:
                self._pools[name] = make_pool(backend, name=name, timing=Timing.TOTAL)
        slots = asyncio.Semaphore(self._concurrency)
        tasks = self._in_flight
        loop = asyncio.get_running_loop()
        try:
            for item in items:
                if self._stop.is_set():
                    break
                stats.seen += 1
                recorded = self._admit(item)
                if recorded is None:
                    continue
                due = self._pacer.due(item.source, recorded.started_at)
                if due is not None:
                    delay = due - time.monotonic()
                    if delay > 0:
                        await self._sleep(delay)
                        if self._stop.is_set():
                            break
                if self._output_room is not None:
                    await self._output_room()
                if not await self._slot(slots):
                    break
                stats.sent += 1
                task = loop.create_task(self._guarded(recorded))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda _: slots.release())
            if tasks:
                # Exceptions are the cancelled ones (a second stop); the others are caught.
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            await comparer.close()
            for pool in self._pools.values():
                await pool.close()
            self._pools.clear()
            stats.finished = time.monotonic()
        return stats

    async def _slot(self, slots: asyncio.Semaphore) -> bool:
        """Take a slot for one more request; False (none taken) when a stop comes first, or
        came while waiting: nothing is sent after it."""
        if not slots.locked():
            await slots.acquire()  # free: taken at once, without a wait
        else:
            acquiring = asyncio.ensure_future(slots.acquire())
            stopping = asyncio.ensure_future(self._stop.wait())
            try:
                await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                if not acquiring.done():
                    acquiring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acquiring
            if acquiring.cancelled():
                return False
        if self._stop.is_set():
            slots.release()
            return False
        return True

    async def _sleep(self, delay: float) -> None:
        if self._stop.is_set():
            return
        waiter = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({waiter}, timeout=delay)
        finally:
            waiter.cancel()

    def _admit(self, item: Item) -> Recorded | None:
        """The entry ready to send, or None (counted) when it is not to be replayed."""
        stats = self.stats
        try:
            recorded = parse_entry(item.entry)
        except InvalidEntry as error:
            stats.read.bad(f"{item.source}, line {item.line}", str(error), corrupt=False)
            return None
        if recorded.method not in SAFE_METHODS and not self._allow_unsafe:
            stats.skipped[Skip.UNSAFE] += 1
            return None
        if recorded.body is None:
            stats.skipped[recorded.request_problem or "request body not captured"] += 1
            return None
        if self.targets.primary is None and recorded.response is None:
            stats.skipped[recorded.response_problem or Skip.NO_RESPONSE] += 1
            return None
        return recorded

    async def _fetch(
        self, name: str, backend: Backend, recorded: Recorded, headers: CIMultiDict[str]
    ) -> Response | Failure:
        return await fetch(
            self._pools[name],
            recorded.path,
            method=recorded.method,
            headers=mirror_request_headers(headers, backend.host),
            body=recorded.body or b"",
            deadline=backend.timeout,
            capture_bytes=self._diff.max_body_bytes,
        )

    async def _guarded(self, recorded: Recorded) -> None:
        """One exchange; a failure of ours costs that exchange (counted), not the replay."""
        try:
            await self._one(recorded)
        except asyncio.CancelledError:
            self.stats.skipped[Skip.INTERRUPTED] += 1
            raise
        except Exception as error:
            reason = self._query(f"{type(error).__name__}: {error}")
            self.stats.skipped[f"{Skip.FAILED} ({reason})"] += 1

    async def _one(self, recorded: Recorded) -> None:
        targets = self.targets
        headers = request_headers(recorded.headers, self._overrides)
        started_at = time.time()
        secondary: Response | Failure | None = None
        if targets.primary is None:
            assert recorded.response is not None
            primary = recorded.response
            candidate = await self._fetch("candidate", targets.candidate, recorded, headers)
        else:
            calls = [
                self._fetch("primary", targets.primary, recorded, headers),
                self._fetch("candidate", targets.candidate, recorded, headers),
            ]
            if targets.secondary is not None:
                calls.append(self._fetch("secondary", targets.secondary, recorded, headers))
            results = await asyncio.gather(*calls)
            live, candidate = results[0], results[1]
            secondary = results[2] if len(results) > 2 else None
            if isinstance(live, Failure):
                self.stats.skipped[f"{Skip.PRIMARY_FAILED} ({live.kind.value})"] += 1
                return
            primary = live
        await self._compare_and_record(recorded, headers, started_at, primary, candidate, secondary)

    async def _compare_and_record(
        self,
        recorded: Recorded,
        headers: CIMultiDict[str],
        started_at: float,
        primary: Response,
        candidate: Response | Failure,
        secondary: Response | Failure | None,
    ) -> None:
        assert self._comparer is not None
        endpoint = endpoint_of(recorded.method, recorded.path)
        if isinstance(candidate, Response) and candidate.truncated and not primary.truncated:
            candidate = Failure(
                kind=FailureKind.TOO_LARGE,
                detail=f"body of {candidate.size} bytes exceeds diff.max_body_bytes",
                latency_ms=candidate.latency_ms,
            )
        comparison: Comparison | None = None
        noise: list[Difference] = []
        if isinstance(candidate, Response):
            comparison = await self._comparer.compare(endpoint, primary, candidate)
            if comparison is None:
                self.stats.skipped[Skip.COMPARE] += 1
                return
            comparison = without_redacted(comparison, recorded.redacted)
            if self._noise is not None:
                comparison, noise = await self._without_noise(
                    endpoint, primary, comparison, secondary
                )
        exchange = Exchange(
            request=RequestSnapshot(
                id=recorded.id or new_request_id(),
                method=recorded.method,
                path=recorded.path,
                headers=tuple(headers.items()),
                body=recorded.body or b"",
                client_ip="",
            ),
            endpoint=endpoint,
            started_at=started_at,
            primary=primary,
            candidate=candidate,
            secondary=secondary,
            tags={"replay": "live" if self.targets.primary is not None else "recorded"},
        )
        record = build_record(
            exchange, comparison, noise=noise, redactor=self._redactor, query=self._query
        )
        stats = self.stats
        stats.completed += 1
        if comparison is None:
            stats.errors += 1
        elif comparison.matched:
            stats.matched += 1
        else:
            stats.mismatched += 1
        self._on_record(record)

    async def _without_noise(
        self,
        endpoint: str,
        primary: Response,
        comparison: Comparison,
        secondary: Response | Failure | None,
    ) -> tuple[Comparison, list[Difference]]:
        assert self._noise is not None
        assert self._comparer is not None
        secondary_diffs: Sequence[Difference] | None = None
        if gives_evidence(primary, secondary):
            assert isinstance(secondary, Response)
            against = await self._comparer.compare(endpoint, primary, secondary)
            if against is not None:
                secondary_diffs = against.differences
        real, noise = self._noise.classify(endpoint, comparison.differences, secondary_diffs)
        return without_noise(comparison, real, noise), noise
