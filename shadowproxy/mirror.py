"""Background mirroring: copies of sampled requests go to the candidate, bounded everywhere.

The primary path hands over a `MirrorTicket` and never waits on it. A ticket moves through
visible steps: admitted, request body complete (the candidate call starts), primary response
complete (comparison can start), recorded; or abandoned at any step, counted by reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import time
from collections.abc import Callable
from typing import Any

from multidict import CIMultiDict

from shadowproxy import oplog
from shadowproxy.compare.model import Comparison
from shadowproxy.config import Backend, Config, without_credentials
from shadowproxy.exchange import (
    Exchange,
    Failure,
    FailureKind,
    RequestSnapshot,
    Response,
)
from shadowproxy.headers import mirror_request_headers
from shadowproxy.metrics import Metrics
from shadowproxy.pool import Pool
from shadowproxy.protection import (
    Admission,
    Breaker,
    BreakerState,
    Clock,
)
from shadowproxy.sampling import CandidateEdit, SkipReason
from shadowproxy.shares import DemandBoard, SharedRate
from shadowproxy.upstream import fetch, is_streaming

Sink = Callable[[Exchange, Comparison | None, Comparison | None], None]
"""Called with the exchange, the candidate's comparison (None: the candidate failed) and the
secondary's (None: no secondary, or it failed)."""
CompareFn = Callable[[str, Response, Response], Any]  # awaitable of Comparison | None

# Candidate answers that count as errors for the breaker besides no usable answer at all: the
# candidate (or the load balancer in front of it) says it is down or overloaded. Other statuses
# are differences to record, not reasons to stop mirroring.
BREAKER_STATUSES = frozenset({502, 503, 504})


def candidate_healthy(result: Response | Failure) -> bool:
    if isinstance(result, Failure):
        # A body too large to compare is an answer all the same, not a sign of a candidate
        # that is down.
        return result.kind is FailureKind.TOO_LARGE
    return result.status not in BREAKER_STATUSES


def common_prefix(primary: Response, candidate: Response) -> tuple[Response, Response]:
    """Both bodies cut to the length both sides delivered, at a line break where there is one.

    A stream cut by time or size is compared over what both sides sent, sizes included; the
    record notes the truncation, so a reader knows the rest was not compared.
    """
    length = min(len(primary.body), len(candidate.body))
    newline = primary.body.rfind(b"\n", 0, length)
    if newline >= 0 and primary.body[: newline + 1] == candidate.body[: newline + 1]:
        length = newline + 1
    return (
        dataclasses.replace(primary, body=primary.body[:length], size=length, truncated=True),
        dataclasses.replace(candidate, body=candidate.body[:length], size=length, truncated=True),
    )


class TicketState(enum.Enum):
    ADMITTED = "admitted"
    SENDING = "sending"
    DONE = "done"
    ABANDONED = "abandoned"


class MirrorTicket:
    """One sampled request on its way to the candidate; filled in by the primary path."""

    __slots__ = (
        "_admission", "_dispatcher", "_primary", "_request_headers", "capture_bytes",
        "client_ip", "edit", "endpoint", "id", "method", "path", "started_at", "state", "task",
    )  # fmt: skip

    def __init__(
        self,
        dispatcher: MirrorDispatcher,
        *,
        request_id: str,
        method: str,
        path: str,
        endpoint: str,
        client_ip: str,
        upstream_headers: CIMultiDict[str],
        edit: CandidateEdit | None = None,
        admission: tuple[Breaker, Admission, int] | None = None,
        capture_bytes: int,
    ) -> None:
        self._dispatcher = dispatcher
        self._primary: asyncio.Future[Response | None] = asyncio.get_running_loop().create_future()
        self._request_headers = upstream_headers
        self._admission = admission
        self.id = request_id
        self.method = method
        self.path = path
        """The client's raw path; the candidate gets ``edit.path(path)``."""
        self.endpoint = endpoint
        self.client_ip = client_ip
        self.edit = edit
        """The matched rule's changes to the candidate's copy (path prefix, headers)."""
        self.capture_bytes = capture_bytes
        """``diff.max_body_bytes`` as the request started: the primary's body was captured
        under it, so the candidate's is too, whatever a reload sets meanwhile."""
        self.started_at = time.time()
        self.state = TicketState.ADMITTED
        self.task: asyncio.Task[None] | None = None
        """The mirror under way, once the request body is complete."""

    def settle(self, healthy: bool | None) -> None:
        """Tell the breaker that admitted this request how the candidate did, once.

        None: the candidate was never asked (so a probe's turn passes on).
        """
        held, self._admission = self._admission, None
        if held is None:
            return
        breaker, admission, generation = held
        if healthy is None:
            breaker.release(admission)
        else:
            breaker.record(admission, healthy, generation)

    def request_complete(self, body: bytes) -> None:
        """The whole request body is known: the candidate call starts now, beside the primary."""
        if self.state is not TicketState.ADMITTED:
            return
        self.state = TicketState.SENDING
        request = RequestSnapshot(
            id=self.id,
            method=self.method,
            path=self.path,
            headers=tuple(self._request_headers.items()),
            body=body,
            client_ip=self.client_ip,
        )
        self._dispatcher._launch(self, request, self._request_headers)

    def primary_complete(self, response: Response) -> None:
        if not self._primary.done():
            self._primary.set_result(response)

    def abandon(self, reason: SkipReason) -> None:
        """Nothing will be compared for this request; counted once, by reason."""
        if self.state in (TicketState.DONE, TicketState.ABANDONED):
            return
        was_admitted = self.state is TicketState.ADMITTED
        if self._primary.done():
            if not was_admitted:
                return  # the mirror is under way and will be compared
            # The primary answered before the request body was read in full: no complete copy
            # exists to send. Without this the ticket would hold its in-flight slot (and a
            # breaker probe's turn) for good.
            reason = SkipReason.REQUEST_INCOMPLETE
        self.state = TicketState.ABANDONED
        if not self._primary.done():
            self._primary.set_result(None)
        self._dispatcher._count_skip(reason)
        if was_admitted:  # no task holds the in-flight slot yet
            self.settle(None)
            self._dispatcher._release()
        elif self.task is not None:
            # Nothing will be compared: waiting for the candidate would only hold the slot.
            self.task.cancel()

    async def primary_response(self) -> Response | None:
        return await self._primary


class MirrorDispatcher:
    """Admits mirrors within the in-flight bound and runs each one as a background task."""

    def __init__(
        self,
        config: Config,
        *,
        candidate_pool: Pool,
        secondary_pool: Pool | None = None,
        compare: CompareFn,
        metrics: Metrics,
        sinks: list[Sink],
        workers: int = 1,
        board: DemandBoard | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        """``workers``: how many processes share ``mirror.max_rps``: evenly, or by what each
        is asked for when they share a ``board``."""
        self._candidate_pool = candidate_pool
        self._secondary_pool = secondary_pool
        self._compare = compare
        self._metrics = metrics
        self._in_flight_now = metrics.labelled(metrics.in_flight)
        self._mirrored = metrics.labelled(metrics.mirrored)
        self._sinks = sinks
        self._workers = max(1, workers)
        self._board = board
        self._clock = clock
        self._log = oplog.get()
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._closing = False
        self._rate: SharedRate | None = None
        self._breaker: Breaker | None = None
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Take new bounds; mirrors already under way finish under the old ones.

        The rate limit and the breaker keep their state across a reload (saved tokens; an open
        breaker stays open, under the new pause), so a reload never lets a burst through to a
        candidate that is struggling. Removing ``max_rps`` or ``breaker`` removes them; a new
        candidate URL starts with a closed breaker.
        """
        previous = getattr(self, "_candidate", None)
        self._config = config
        self._candidate: Backend = config.candidate
        self._secondary: Backend | None = config.secondary
        self._max_in_flight = config.mirror.max_in_flight
        self._capture_bytes = config.diff.max_body_bytes
        self._configure_protection(
            config, new_candidate=previous is not None and previous.url != config.candidate.url
        )

    def _configure_protection(self, config: Config, *, new_candidate: bool) -> None:
        mirror = config.mirror
        if mirror.max_rps is None:
            self._rate = None
        elif self._rate is None:
            self._rate = SharedRate(
                mirror.max_rps, workers=self._workers, board=self._board, clock=self._clock
            )
        else:
            self._rate.set_total(mirror.max_rps)

        settings, breaker = mirror.breaker, self._breaker
        if breaker is not None and (settings is None or new_candidate):
            if breaker.is_open:
                reason = "new candidate" if new_candidate else "breaker removed from the config"
                self._breaker_changed(breaker, BreakerState.CLOSED, reason)
            self._breaker = breaker = None
        if settings is None:
            return
        if breaker is None:
            self._breaker = self._new_breaker(settings.failures, settings.pause)
        else:
            breaker.configure(settings.failures, settings.pause)

    def _new_breaker(self, failures: int, pause: float) -> Breaker:
        def changed(state: BreakerState, reason: str) -> None:
            if self._breaker is breaker:  # a replaced breaker's late results change nothing
                self._breaker_changed(breaker, state, reason)

        breaker = Breaker(failures, pause, clock=self._clock, listener=changed)
        return breaker

    def _breaker_changed(self, breaker: Breaker, state: BreakerState, reason: str) -> None:
        if state is BreakerState.OPEN:
            self._metrics.breaker_open.set(1)
            self._log.warning(
                "breaker_open",
                reason=reason,
                pause_seconds=breaker.pause,
                candidate=without_credentials(self._candidate.url),
            )
        elif state is BreakerState.HALF_OPEN:
            self._log.info("breaker_half_open", detail="mirroring one probe request")
        else:
            self._metrics.breaker_open.set(0)
            self._log.info(
                "breaker_closed", reason=reason, candidate=without_credentials(self._candidate.url)
            )

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def breaker(self) -> Breaker | None:
        return self._breaker

    def admit(
        self,
        *,
        request_id: str,
        method: str,
        path: str,
        endpoint: str,
        client_ip: str,
        upstream_headers: CIMultiDict[str],
        edit: CandidateEdit | None = None,
    ) -> MirrorTicket | None:
        """A ticket when the candidate may get this request now; checked in order: shutdown,
        the breaker, the in-flight bound, the rate limit. Refusals are counted by reason."""
        if self._closing:
            self._count_skip(SkipReason.SHUTDOWN)
            return None
        breaker = self._breaker
        admission = breaker.allow() if breaker is not None else None
        if breaker is not None and admission is None:
            self._count_skip(SkipReason.BREAKER)
            return None
        refused: SkipReason | None = None
        if self._in_flight >= self._max_in_flight:
            refused = SkipReason.IN_FLIGHT
        elif self._rate is not None and not self._rate.take():
            refused = SkipReason.RATE_LIMIT
        if refused is not None:
            if breaker is not None and admission is not None:
                breaker.release(admission)
            self._count_skip(refused)
            return None
        self._in_flight += 1
        self._in_flight_now.set(self._in_flight)
        return MirrorTicket(
            self,
            request_id=request_id,
            method=method,
            path=path,
            endpoint=endpoint,
            client_ip=client_ip,
            upstream_headers=upstream_headers,
            edit=edit,
            admission=(
                (breaker, admission, breaker.generation)
                if breaker is not None and admission is not None
                else None
            ),
            capture_bytes=self._capture_bytes,
        )

    def _count_skip(self, reason: SkipReason) -> None:
        self._metrics.labelled(self._metrics.skipped, reason.value).inc()

    def _release(self) -> None:
        self._in_flight -= 1
        self._in_flight_now.set(self._in_flight)

    def _launch(
        self, ticket: MirrorTicket, request: RequestSnapshot, headers: CIMultiDict[str]
    ) -> None:
        self._mirrored.inc()
        task = asyncio.get_running_loop().create_task(self._run(ticket, request, headers))
        ticket.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self, ticket: MirrorTicket, request: RequestSnapshot, headers: CIMultiDict[str]
    ) -> None:
        try:
            await self._mirror(ticket, request, headers)
        except asyncio.CancelledError:
            if ticket.state is not TicketState.ABANDONED:  # else counted where it was abandoned
                self._count_skip(SkipReason.SHUTDOWN)
            raise
        except Exception as error:
            # A fault of the proxy's own in the background (the client has its answer): one
            # line in the operational log, not an unretrieved task's traceback on stderr.
            self._log.error(
                "mirror_failed",
                request_id=request.id,
                error=f"{type(error).__name__}: {error}",
            )
        finally:
            ticket.settle(None)  # cancelled before the candidate answered
            self._release()

    async def _mirror(
        self, ticket: MirrorTicket, request: RequestSnapshot, headers: CIMultiDict[str]
    ) -> None:
        # The candidate and the secondary are asked at the same time, beside the primary.
        candidate_call = self._ask(self._candidate, self._candidate_pool, ticket, request, headers)
        secondary: Response | Failure | None = None
        if self._secondary is not None and self._secondary_pool is not None:
            # The secondary runs the primary's version: it gets the rule's header changes (a
            # test tenant, a stripped credential) but not the candidate's path rewrite.
            secondary_call = self._ask(
                self._secondary, self._secondary_pool, ticket, request, headers, rewrite=False
            )
            candidate, secondary = await asyncio.gather(candidate_call, secondary_call)
        else:
            candidate = await candidate_call
        ticket.settle(candidate_healthy(candidate))
        primary = await ticket.primary_response()
        if primary is None:
            return  # abandoned by the primary path and counted there
        ticket.state = TicketState.DONE
        primary_seen, candidate = self._comparable(primary, candidate, ticket.capture_bytes)
        self._observe("primary", primary)
        self._observe("candidate", candidate)
        comparison: Comparison | None = None
        if isinstance(candidate, Response):
            comparison = await self._compare(ticket.endpoint, primary_seen, candidate)
            if comparison is None:
                self._count_skip(SkipReason.COMPARE_QUEUE)
                return
        else:
            self._metrics.labelled(self._metrics.candidate_errors, candidate.kind.value).inc()
        secondary_comparison: Comparison | None = None
        if secondary is not None:
            primary_for_secondary, secondary = self._comparable(
                primary, secondary, ticket.capture_bytes
            )
            self._observe("secondary", secondary)
            if isinstance(secondary, Response) and comparison is not None:
                # None (queue full) leaves the secondary without evidence: nothing is noise.
                secondary_comparison = await self._compare(
                    ticket.endpoint, primary_for_secondary, secondary
                )
        exchange = Exchange(
            request=request,
            endpoint=ticket.endpoint,
            started_at=ticket.started_at,
            primary=primary,
            candidate=candidate,
            secondary=secondary,
        )
        for sink in self._sinks:
            sink(exchange, comparison, secondary_comparison)

    async def _ask(
        self,
        backend: Backend,
        pool: Pool,
        ticket: MirrorTicket,
        request: RequestSnapshot,
        headers: CIMultiDict[str],
        *,
        rewrite: bool = True,
    ) -> Response | Failure:
        """One mirrored copy; the primary's headers are never changed."""
        copy_headers = mirror_request_headers(headers, backend.host)
        path = request.path
        if ticket.edit is not None:
            ticket.edit.apply_headers(copy_headers)
            if rewrite:
                path = ticket.edit.path(path)
        return await fetch(
            pool,
            path,
            method=request.method,
            headers=copy_headers,
            body=request.body,
            deadline=backend.timeout,
            capture_bytes=ticket.capture_bytes,
        )

    def _comparable(
        self, primary: Response, other: Response | Failure, capture_bytes: int
    ) -> tuple[Response, Response | Failure]:
        """A body too large to capture is a failure; streams are compared over their window."""
        if isinstance(other, Failure):
            return primary, other
        if other.size > capture_bytes and not primary.truncated:
            more = "" if other.size_known else "more than "
            return primary, Failure(
                kind=FailureKind.TOO_LARGE,
                detail=f"body of {more}{other.size} bytes exceeds diff.max_body_bytes",
                latency_ms=other.latency_ms,
            )
        if (primary.truncated or other.truncated) and is_streaming(primary.header("Content-Type")):
            return common_prefix(primary, other)
        return primary, other

    def _observe(self, backend: str, result: Response | Failure) -> None:
        self._metrics.labelled(self._metrics.latency, backend).observe(result.latency_ms / 1000)

    async def idle(self) -> None:
        """Wait until no mirror is under way (for tests and orderly shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def drain(self, grace: float) -> int:
        """Stop admitting; let pending mirrors finish within ``grace`` seconds, cancel the rest.

        Returns how many were cancelled.
        """
        self._closing = True
        pending = set(self._tasks)
        if pending and grace > 0:
            _, pending = await asyncio.wait(pending, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        return len(pending)
