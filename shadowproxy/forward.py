"""The primary path: the client's request goes to the primary, its answer streams back untouched.

Each request moves through visible phases: admit (size check, sampling), send upstream
(the body streams through, teed for the mirror when sampled), answer (status, headers, then
the body as it arrives), and hand-over to the mirror. Nothing here waits on the candidate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import HttpVersion11, web
from aiohttp.http_writer import StreamWriter
from multidict import CIMultiDict

from shadowproxy import oplog, websocket
from shadowproxy.bounded import BoundedCopy
from shadowproxy.capture import CaptureSink, Recording
from shadowproxy.config import Config
from shadowproxy.endpoints import endpoint_of
from shadowproxy.exchange import Response
from shadowproxy.headers import (
    OWN_ANSWER_HEADERS,
    head_bytes,
    request_id_of,
    response_headers,
    upstream_request_headers,
    with_host,
)
from shadowproxy.metrics import Metrics
from shadowproxy.mirror import MirrorDispatcher, MirrorTicket, TicketState
from shadowproxy.pool import (
    NO_BODY_STATUSES,
    ConnectFailed,
    InvalidResponse,
    Pool,
    UpstreamError,
    UpstreamResponse,
)
from shadowproxy.record import QueryRedactor
from shadowproxy.sampling import Sampler, SkipReason
from shadowproxy.upstream import is_streaming, request_options, target_url

# Headers aiohttp's server would add to a response when absent; the client must get only what
# the primary sent.
_SERVER_DEFAULTS = ("Date", "Server", "Content-Type")


class PassthroughResponse(web.StreamResponse):
    """A streamed response that adds no header of its own."""

    def send_headers_with_body(self) -> None:
        """Hold the headers back and send them in the same write as the body: one packet and
        one wake-up of the client instead of two. Only for a body that is already here; a
        streamed body's headers must not wait for it.

        ``_send_headers_immediately`` is how aiohttp's own ``web.Response`` does this (3.11+);
        older versions send the headers right away, which is correct, only slower.
        """
        self._send_headers_immediately = False

    async def _prepare_headers(self) -> None:
        supplied = {name for name in _SERVER_DEFAULTS if name in self.headers}
        # aiohttp drops a 304's Content-Length, which RFC 9110 (section 15.4.5) allows: the
        # size of the representation the 304 stands for; no body follows. Keep it, in place.
        kept = None
        if self.status == 304 and "Content-Length" in self.headers:
            kept = list(self.headers.items())
        await super()._prepare_headers()
        if kept is not None and "Content-Length" not in self.headers:
            # aiohttp only removed that one field and appended its own after the primary's.
            added = list(self.headers.items())[len(kept) - 1 :]
            self.headers.clear()
            self.headers.extend(kept + added)
        for name in _SERVER_DEFAULTS:
            if name not in supplied:
                self.headers.popall(name, None)


class ExactHeadResponse(PassthroughResponse):
    """A passthrough response whose head is written from the bytes the primary sent.

    aiohttp's writer drops bytes that are not UTF-8 and re-encodes an ISO-8859-1 reason; only
    heads with such bytes come here, the others keep aiohttp's path as it is.
    """

    async def _write_headers(self) -> None:
        request, writer = self._req, self._payload_writer
        assert request is not None
        assert writer is not None
        version = request.version
        status_line = f"HTTP/{version[0]}.{version[1]} {self._status} {self._reason}"
        # aiohttp serialises the head as usual (its checks and hooks run), and holds it until
        # sent: that held copy is replaced with the exact bytes.
        await writer.write_headers(status_line, self._headers)
        if isinstance(writer, StreamWriter) and writer._headers_buf is not None:
            writer._headers_buf = head_bytes(status_line, self._headers.items())
        if self._send_headers_immediately:
            writer.send_headers()


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CLIENT_CLOSED_REQUEST = 499
"""nginx's status for a client that went away before its answer; counted, never sent."""


class ClientBodyFailed(Exception):
    """The client's body could not be passed on, through the client's doing: too large, not
    valid HTTP, or the client went away. Never a primary failure."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


def _expects_continue(request: web.BaseRequest) -> bool:
    return (
        request.version >= HttpVersion11
        and request.headers.get("Expect", "").lower() == "100-continue"
        and request.body_exists
    )


class _Snapshot:
    """The primary's answer as captured so far, taken when a stream's window closes."""

    def __init__(self, upstream: UpstreamResponse, capture: BoundedCopy, started: float):
        self._upstream, self._capture, self._started = upstream, capture, started

    def take(self) -> Response:
        return Response(
            status=self._upstream.status,
            headers=self._upstream.headers,
            body=self._capture.body(),
            size=self._capture.size,
            latency_ms=(time.perf_counter() - self._started) * 1000,
            truncated=True,
        )


def _ends_with_close(request: web.BaseRequest, response: web.StreamResponse) -> bool:
    """The client learns where the body ends only from the close: an HTTP/1.0 client, and an
    answer with a body but no Content-Length (chunked is HTTP/1.1 only)."""
    return (
        request.version < HttpVersion11
        and response.content_length is None
        and request.method != "HEAD"
        and response.status not in NO_BODY_STATUSES
    )


def error_response(status: int, error: str, detail: str, request_id: str) -> web.Response:
    body = orjson.dumps({"error": error, "detail": detail, "request_id": request_id})
    return web.Response(
        status=status, body=body, content_type="application/json", headers=OWN_ANSWER_HEADERS
    )


@dataclass(frozen=True, slots=True)
class _Settings:
    """What a config means for the primary path, built once per config and swapped whole."""

    config: Config
    options: Mapping[str, Any]
    sampler: Sampler
    query: QueryRedactor


class PrimaryPath:
    """The request handler of the proxy listener."""

    def __init__(
        self,
        config: Config,
        *,
        pool: Pool,
        websocket_session: aiohttp.ClientSession,
        mirror: MirrorDispatcher,
        metrics: Metrics,
        capture: CaptureSink | None = None,
    ) -> None:
        self._pool = pool
        self._websocket_session = websocket_session
        self._mirror = mirror
        self._capture = capture
        self._metrics = metrics
        self._log = oplog.get()
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Swap in a new config; requests under way keep the values they started with."""
        self._settings = _Settings(
            config=config,
            options=request_options(config.primary),
            sampler=Sampler(config.mirror),
            query=QueryRedactor(config.log.redact_query),
        )

    @property
    def _query(self) -> QueryRedactor:
        return self._settings.query

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        settings = self._settings  # one config for the whole request, whatever reloads meanwhile
        config = settings.config
        request_id = request_id_of(request.headers)
        content_length = request.content_length
        limit = config.limits.max_request_body_bytes
        if limit is not None and content_length is not None and content_length > limit:
            self._metrics.requests.labels("413").inc()
            self._metrics.rejected.labels("request_too_large").inc()
            return error_response(
                413, "request_too_large", f"body exceeds {limit} bytes", request_id
            )

        client_ip = request.remote or ""
        headers = upstream_request_headers(
            request.headers, client_ip=client_ip, scheme=request.scheme, request_id=request_id
        )
        expect_continue = _expects_continue(request)
        if expect_continue:
            headers.popall("Expect", None)
        if websocket.is_upgrade(request):
            try:
                return await websocket.relay(
                    request,
                    self._websocket_session,
                    target_url(config.primary, request.raw_path),
                    with_host(headers, config.primary.host),
                    settings.options,
                    max_message_bytes=config.limits.max_websocket_message_bytes,
                    on_open=self._upgraded,
                )
            except websocket.UpgradeRefused as refused:
                return await self._refused_upgrade(request, refused)
            except (TimeoutError, UpstreamError) as error:
                return self._primary_failed(error, request, request_id)
        ticket = self._admit(settings, request, request_id, client_ip, headers, content_length)
        recording = self._record(request, request_id, headers)
        try:
            return await self._forward(
                settings, request, request_id, headers, ticket, recording, expect_continue
            )
        finally:
            if ticket is not None:
                ticket.abandon(SkipReason.CLIENT_ABORTED)
            if recording is not None:
                recording.close()

    def _admit(
        self,
        settings: _Settings,
        request: web.BaseRequest,
        request_id: str,
        client_ip: str,
        headers: CIMultiDict[str],
        content_length: int | None,
    ) -> MirrorTicket | None:
        decision = settings.sampler.decide(
            request.method,
            request.raw_path,
            headers=request.headers,
            content_length=content_length,
            client_ip=client_ip,
        )
        if not decision.mirror:
            assert decision.reason is not None
            self._metrics.labelled(self._metrics.skipped, decision.reason.value).inc()
            return None
        return self._mirror.admit(
            request_id=request_id,
            method=request.method,
            path=request.raw_path,
            endpoint=endpoint_of(request.method, request.raw_path),
            client_ip=client_ip,
            upstream_headers=headers,
            edit=decision.edit,
        )

    def _record(
        self, request: web.BaseRequest, request_id: str, headers: CIMultiDict[str]
    ) -> Recording | None:
        """A recording of this exchange when the capture samples it; independent of mirroring."""
        if self._capture is None:
            return None
        version = request.version
        return self._capture.begin(
            request_id=request_id,
            method=request.method,
            raw_path=request.raw_path,
            scheme=request.scheme,
            http_version=f"HTTP/{version.major}.{version.minor}",
            headers=tuple(headers.items()),
        )

    async def _forward(
        self,
        settings: _Settings,
        request: web.BaseRequest,
        request_id: str,
        headers: CIMultiDict[str],
        ticket: MirrorTicket | None,
        recording: Recording | None,
        expect_continue: bool,
    ) -> web.StreamResponse:
        config = settings.config
        data: AsyncIterator[bytes] | None = None
        # Where the body stream says why it stopped, when the client was the cause: the
        # primary request fails with it, and the client is answered for its own fault.
        body_failed: list[ClientBodyFailed] = []
        if request.body_exists:
            data = self._request_body(
                config, request, ticket, recording, expect_continue, body_failed
            )
        elif ticket is not None:
            ticket.request_complete(b"")

        started = time.perf_counter()
        try:
            upstream = await self._pool.request(
                request.method,
                request.raw_path,
                with_host(headers, config.primary.host),
                data,
            )
        except Exception as error:
            if body_failed:
                failure = body_failed[0]
                if ticket is not None:
                    gone = failure.status == CLIENT_CLOSED_REQUEST
                    # A body that stalled, broke or grew too large is no abort: it is incomplete.
                    ticket.abandon(
                        SkipReason.CLIENT_ABORTED if gone else SkipReason.REQUEST_INCOMPLETE
                    )
                return self._client_body_failed(failure, request, request_id)
            if ticket is not None:
                ticket.abandon(SkipReason.PRIMARY_FAILED)
            return self._primary_failed(error, request, request_id)

        try:
            return await self._answer(config, request, upstream, ticket, started, recording)
        finally:
            upstream.release()

    async def _request_body(
        self,
        config: Config,
        request: web.BaseRequest,
        ticket: MirrorTicket | None,
        recording: Recording | None = None,
        expect_continue: bool = False,
        failed: list[ClientBodyFailed] | None = None,
    ) -> AsyncIterator[bytes]:
        """Stream the client's body upstream; keep a copy for the mirror while it fits.

        A body over ``limits.max_request_body_bytes``, one that is not valid HTTP (a broken
        chunk), one that stalls for ``limits.idle_timeout`` or one the client stops sending by
        closing the connection ends the stream with `ClientBodyFailed`, also put in
        ``failed``: the primary never gets a complete request.

        With ``Expect: 100-continue`` the client is told to send its body once the primary's
        connection is ready for it. The proxy answers the expectation itself, as nginx does,
        and does not pass it on: a backend that never sends ``100 Continue`` must not stall.
        """
        if expect_continue:
            await request.writer.write(CONTINUE)
        copy = BoundedCopy(config.mirror.max_body_bytes) if ticket is not None else None
        # A body still arriving after the candidate's timeout is not mirrored: its ticket
        # holds an in-flight slot, and a few slow uploaders would stop mirroring for everyone.
        too_slow = (
            asyncio.get_running_loop().call_later(
                config.candidate.timeout, ticket.abandon, SkipReason.REQUEST_INCOMPLETE
            )
            if ticket is not None
            else None
        )
        limit = config.limits.max_request_body_bytes
        stall = config.limits.idle_timeout
        try:
            received = 0
            chunks = aiter(request.content.iter_any())
            while True:
                problem: ClientBodyFailed | None = None
                try:
                    async with asyncio.timeout(stall):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    problem = ClientBodyFailed(408, "request_timeout", "the request body stalled")
                except web.RequestPayloadError:
                    problem = ClientBodyFailed(400, "bad_request", "the request body is malformed")
                except ConnectionError:
                    problem = ClientBodyFailed(
                        CLIENT_CLOSED_REQUEST, "client_aborted", "the client closed the connection"
                    )
                else:
                    received += len(chunk)
                    if limit is not None and received > limit:
                        problem = ClientBodyFailed(
                            413, "request_too_large", f"body exceeds {limit} bytes"
                        )
                if problem is not None:
                    if failed is not None:
                        failed.append(problem)
                    raise problem
                if copy is not None and ticket is not None:
                    if ticket.state is TicketState.ABANDONED:
                        copy = None  # abandoned meanwhile (too slow): keep nothing for it
                    else:
                        copy.add(chunk)
                        if copy.overflowed:
                            ticket.abandon(SkipReason.BODY_SIZE)
                            copy = None
                if recording is not None:
                    recording.request_chunk(chunk)
                yield chunk
            if copy is not None and ticket is not None:
                ticket.request_complete(copy.body())
        finally:
            if too_slow is not None:
                too_slow.cancel()

    async def _answer(
        self,
        config: Config,
        request: web.BaseRequest,
        upstream: UpstreamResponse,
        ticket: MirrorTicket | None,
        started: float,
        recording: Recording | None = None,
    ) -> web.StreamResponse:
        kind = ExactHeadResponse if upstream.head_not_utf8 else PassthroughResponse
        response = kind(
            status=upstream.status,
            reason=upstream.reason,
            headers=response_headers(upstream.headers),
        )
        if _ends_with_close(request, response):
            # aiohttp would leave such a connection open, and the client would wait for a
            # close that never comes; closing it sends the same bytes.
            response.force_close()
        if upstream.complete:
            # The whole body came with the headers, as most small answers do.
            return await self._answer_whole(
                config, request, upstream, response, ticket, started, recording
            )
        await response.prepare(request)
        capture = BoundedCopy(config.diff.max_body_bytes) if ticket is not None else None
        window = None
        if (
            ticket is not None
            and capture is not None
            and is_streaming(upstream.header("Content-Type"))
        ):
            # A stream may outlive any mirror: compare what the window (the candidate's own
            # deadline) or the capture cap holds, and let the client's stream go on.
            snapshot = _Snapshot(upstream, capture, started)
            window = asyncio.get_running_loop().call_later(
                config.candidate.timeout, lambda: ticket.primary_complete(snapshot.take())
            )
        try:
            while chunk := await upstream.read_chunk():
                if capture is not None:
                    capture.add(chunk)
                    if window is not None and capture.overflowed:
                        assert ticket is not None
                        ticket.primary_complete(snapshot.take())
                if recording is not None:
                    recording.response_chunk(chunk)
                try:
                    await response.write(chunk)
                except ConnectionError:
                    # The client went away mid-download: nothing to compare, nothing wrong
                    # with the primary. handle() counts the mirror as client_aborted.
                    self._log.debug("client_aborted_download", path=self._query(request.raw_path))
                    return response
        except ClientBodyFailed as failure:
            # The primary answered early and the client's upload then broke off: the answer
            # cannot be finished, through the client's doing.
            self._log.info(
                "client_body_failed", path=self._query(request.raw_path), error=failure.error
            )
            if ticket is not None:
                ticket.abandon(SkipReason.CLIENT_ABORTED)
            if request.transport is not None:
                request.transport.close()
            return response
        except (UpstreamError, TimeoutError) as error:
            # The primary broke off mid-body. The client must see a broken response, not a
            # complete-looking one: close the connection without the final chunk.
            self._metrics.primary_errors.labels("truncated").inc()
            self._log.warning(
                "primary_body_truncated",
                request_id=ticket.id if ticket else None,
                error=self._query(str(error)),
            )
            if ticket is not None:
                ticket.abandon(SkipReason.PRIMARY_FAILED)
            if request.transport is not None:
                request.transport.close()
            return response
        finally:
            if window is not None:
                window.cancel()
        await response.write_eof()
        self._complete(upstream, ticket, capture, started, recording)
        return response

    async def _answer_whole(
        self,
        config: Config,
        request: web.BaseRequest,
        upstream: UpstreamResponse,
        response: PassthroughResponse,
        ticket: MirrorTicket | None,
        started: float,
        recording: Recording | None,
    ) -> web.StreamResponse:
        """Answer with a body that has fully arrived: headers and body in one write. A client
        that is gone fails the write, as it would fail ``prepare`` on the streaming path."""
        response.send_headers_with_body()
        await response.prepare(request)
        body = upstream.body_nowait()
        await response.write_eof(body)
        capture = BoundedCopy(config.diff.max_body_bytes) if ticket is not None else None
        if capture is not None:
            capture.add(body)
        if recording is not None:
            recording.response_chunk(body)
        self._complete(upstream, ticket, capture, started, recording)
        return response

    def _complete(
        self,
        upstream: UpstreamResponse,
        ticket: MirrorTicket | None,
        capture: BoundedCopy | None,
        started: float,
        recording: Recording | None,
    ) -> None:
        """The client has the whole answer: count it, record it, hand it to the mirror."""
        self._metrics.labelled(self._metrics.requests, str(upstream.status)).inc()
        if recording is not None:
            recording.complete(upstream.status, upstream.reason, upstream.headers)
        if ticket is not None and capture is not None:
            ticket.primary_complete(
                Response(
                    status=upstream.status,
                    headers=upstream.headers,
                    body=capture.body(),
                    size=capture.size,
                    latency_ms=(time.perf_counter() - started) * 1000,
                    truncated=capture.overflowed,
                )
            )

    def _client_body_failed(
        self, failure: ClientBodyFailed, request: web.BaseRequest, request_id: str
    ) -> web.StreamResponse:
        """The answer when the client's body could not be passed on (the client may be gone,
        then nobody reads it). The connection closes after it: the rest of the body, if any,
        is not worth reading."""
        self._metrics.requests.labels(str(failure.status)).inc()
        self._metrics.rejected.labels(failure.error).inc()
        self._log.info(
            "client_body_failed",
            request_id=request_id,
            method=request.method,
            path=self._query(request.raw_path),
            error=failure.error,
        )
        response = error_response(failure.status, failure.error, failure.detail, request_id)
        response.force_close()
        return response

    def _upgraded(self) -> None:
        """The client got its 101: an upgrade relayed, and an answered request."""
        self._metrics.websockets.inc()
        self._metrics.requests.labels("101").inc()

    async def _refused_upgrade(
        self, request: web.BaseRequest, refused: websocket.UpgradeRefused
    ) -> web.StreamResponse:
        self._metrics.requests.labels(str(refused.status)).inc()
        response = PassthroughResponse(status=refused.status, headers=refused.headers)
        response.content_length = 0
        await response.prepare(request)
        await response.write_eof()
        return response

    def _primary_failed(
        self, error: Exception, request: web.BaseRequest, request_id: str
    ) -> web.StreamResponse:
        if isinstance(error, TimeoutError):
            status, kind, detail = 504, "primary_timeout", "the primary did not answer in time"
        elif isinstance(error, ConnectFailed):
            status, kind, detail = 502, "primary_unreachable", "cannot connect to the primary"
        elif isinstance(error, InvalidResponse):
            status, kind = 502, "primary_invalid_response"
            detail = "the primary's answer is not valid HTTP"
        else:
            status, kind, detail = 502, "primary_failed", "the primary closed the connection"
        self._metrics.requests.labels(str(status)).inc()
        self._metrics.primary_errors.labels(kind).inc()
        fields: dict[str, Any] = {"request_id": request_id, "method": request.method}
        path, text = self._query(request.raw_path), self._query(repr(error))
        self._log.warning(kind, path=path, error=text, **fields)
        return error_response(status, kind, detail, request_id)
