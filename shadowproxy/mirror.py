"""Background mirroring: copies of sampled requests go to the candidate, bounded everywhere.

The primary path hands over a `MirrorTicket` and never waits on it. A ticket moves through
visible steps: admitted, request body complete (the candidate call starts), primary response
complete (comparison can start), recorded; or abandoned at any step, counted by reason.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from multidict import CIMultiDict

from shadowproxy.compare.model import Comparison
from shadowproxy.config import Backend, Config
from shadowproxy.exchange import (
    Exchange,
    Failure,
    FailureKind,
    RequestSnapshot,
    Response,
)
from shadowproxy.headers import mirror_request_headers
from shadowproxy.metrics import Metrics
from shadowproxy.sampling import SkipReason
from shadowproxy.upstream import fetch, target_url

Sink = Callable[[Exchange, Comparison | None], None]
CompareFn = Callable[[str, Response, Response], Any]  # awaitable of Comparison | None


class TicketState(enum.Enum):
    ADMITTED = "admitted"
    SENDING = "sending"
    DONE = "done"
    ABANDONED = "abandoned"


class MirrorTicket:
    """One sampled request on its way to the candidate; filled in by the primary path."""

    __slots__ = (
        "_dispatcher", "_primary", "_request_headers", "client_ip", "endpoint", "id", "method",
        "path", "started_at", "state",
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
    ) -> None:
        self._dispatcher = dispatcher
        self._primary: asyncio.Future[Response | None] = asyncio.get_running_loop().create_future()
        self._request_headers = upstream_headers
        self.id = request_id
        self.method = method
        self.path = path
        self.endpoint = endpoint
        self.client_ip = client_ip
        self.started_at = time.time()
        self.state = TicketState.ADMITTED

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
        if self.state in (TicketState.DONE, TicketState.ABANDONED) or self._primary.done():
            return
        was_admitted = self.state is TicketState.ADMITTED
        self.state = TicketState.ABANDONED
        if not self._primary.done():
            self._primary.set_result(None)
        self._dispatcher._count_skip(reason)
        if was_admitted:  # no task holds the in-flight slot yet
            self._dispatcher._release()

    async def primary_response(self) -> Response | None:
        return await self._primary


class MirrorDispatcher:
    """Admits mirrors within the in-flight bound and runs each one as a background task."""

    def __init__(
        self,
        config: Config,
        *,
        candidate_session: aiohttp.ClientSession,
        compare: CompareFn,
        metrics: Metrics,
        sinks: list[Sink],
    ) -> None:
        self._candidate_session = candidate_session
        self._compare = compare
        self._metrics = metrics
        self._sinks = sinks
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._closing = False
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Take new bounds; mirrors already under way finish under the old ones."""
        self._config = config
        self._candidate: Backend = config.candidate
        self._max_in_flight = config.mirror.max_in_flight
        self._capture_bytes = config.diff.max_body_bytes

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def admit(
        self,
        *,
        request_id: str,
        method: str,
        path: str,
        endpoint: str,
        client_ip: str,
        upstream_headers: CIMultiDict[str],
    ) -> MirrorTicket | None:
        if self._closing:
            self._count_skip(SkipReason.SHUTDOWN)
            return None
        if self._in_flight >= self._max_in_flight:
            self._count_skip(SkipReason.IN_FLIGHT)
            return None
        self._in_flight += 1
        self._metrics.in_flight.set(self._in_flight)
        return MirrorTicket(
            self,
            request_id=request_id,
            method=method,
            path=path,
            endpoint=endpoint,
            client_ip=client_ip,
            upstream_headers=upstream_headers,
        )

    def _count_skip(self, reason: SkipReason) -> None:
        self._metrics.skipped.labels(reason.value).inc()

    def _release(self) -> None:
        self._in_flight -= 1
        self._metrics.in_flight.set(self._in_flight)

    def _launch(
        self, ticket: MirrorTicket, request: RequestSnapshot, headers: CIMultiDict[str]
    ) -> None:
        self._metrics.mirrored.inc()
        task = asyncio.get_running_loop().create_task(self._run(ticket, request, headers))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self, ticket: MirrorTicket, request: RequestSnapshot, headers: CIMultiDict[str]
    ) -> None:
        try:
            await self._mirror(ticket, request, headers)
        except asyncio.CancelledError:
            self._count_skip(SkipReason.SHUTDOWN)
            raise
        finally:
            self._release()

    async def _mirror(
        self, ticket: MirrorTicket, request: RequestSnapshot, headers: CIMultiDict[str]
    ) -> None:
        backend = self._candidate
        candidate = await fetch(
            self._candidate_session,
            target_url(backend, request.path),
            method=request.method,
            headers=mirror_request_headers(headers, backend.host),
            body=request.body,
            deadline=backend.timeout,
            capture_bytes=self._capture_bytes,
        )
        primary = await ticket.primary_response()
        if primary is None:
            return  # abandoned by the primary path and counted there
        ticket.state = TicketState.DONE
        if isinstance(candidate, Response) and candidate.truncated and not primary.truncated:
            candidate = Failure(
                kind=FailureKind.TOO_LARGE,
                detail=f"body of {candidate.size} bytes exceeds diff.max_body_bytes",
                latency_ms=candidate.latency_ms,
            )
        self._observe("primary", primary)
        self._observe("candidate", candidate)
        comparison: Comparison | None = None
        if isinstance(candidate, Response):
            comparison = await self._compare(ticket.endpoint, primary, candidate)
            if comparison is None:
                self._count_skip(SkipReason.COMPARE_QUEUE)
                return
        else:
            self._metrics.candidate_errors.labels(candidate.kind.value).inc()
        exchange = Exchange(
            request=request,
            endpoint=ticket.endpoint,
            started_at=ticket.started_at,
            primary=primary,
            candidate=candidate,
        )
        for sink in self._sinks:
            sink(exchange, comparison)

    def _observe(self, backend: str, result: Response | Failure) -> None:
        self._metrics.latency.labels(backend).observe(result.latency_ms / 1000)

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
