"""The client-facing connection: limits and deadlines on what clients send.

aiohttp parses the requests; this module adds what a proxy in front of production needs on
top of it, cheaply, per connection:

- a deadline for the request head (``limits.header_timeout``): a client that trickles its
  headers in (slowloris) is answered 408 and cut off. The timer is armed when the first byte of
  a head arrives and disarmed when the head is complete, so it costs nothing while a request is
  handled or a keep-alive connection waits for the next one;
- idle connections close after ``limits.idle_timeout``;
- heads over ``limits.max_header_size`` per line or ``limits.max_headers`` fields get 431;
- every request aiohttp cannot parse gets a short JSON answer (400, or 431) and the connection
  closes: no traceback, no echo of what the client sent, nothing forwarded;
- a request in another HTTP version than 1.0 and 1.1 gets 505;
- a request whose target is not a path (``GET http://host/x``, ``CONNECT host:443``), whose
  body uses a transfer coding other than chunked alone, or whose WebSocket handshake is not
  valid is refused before the primary sees it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import HttpVersion10, HttpVersion11, web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
)
from aiohttp.http_parser import RawRequestMessage
from aiohttp.web_protocol import RequestHandler

from shadowproxy import oplog, websocket
from shadowproxy.config import LimitsConfig
from shadowproxy.forward import error_response
from shadowproxy.headers import OWN_ANSWER_HEADERS, new_request_id, request_id_of
from shadowproxy.metrics import Metrics

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

# Whatever aiohttp itself still logs about client connections goes here, not to aiohttp.server
# (the name the backends' own aiohttp servers use in tests and demos).
LISTENER_LOGGER = logging.getLogger("shadowproxy.listener")

# What llhttp and aiohttp's parser say when a head has more fields than allowed.
_TOO_MANY_HEADERS = "Too many headers received"
SERVED_VERSIONS = (HttpVersion10, HttpVersion11)
# Rejected requests are reported in the operational log at most this often, with a count.
REJECTION_REPORT_INTERVAL = 10.0
# Written as is when a head does not arrive in time: nothing else was sent on the connection.
REQUEST_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Content-Type: application/json\r\n"
    + "".join(f"{name}: {value}\r\n" for name, value in OWN_ANSWER_HEADERS.items()).encode()
    + b"Content-Length: 70\r\n"
    b"Connection: close\r\n\r\n"
    b'{"error":"request_timeout","detail":"the request head took too long"}\n'
)
assert len(REQUEST_TIMEOUT_ANSWER.partition(b"\r\n\r\n")[2]) == 70


class RejectionLog:
    """Reports refused requests in the operational log without letting a hostile client
    flood it: the first one, then at most one line per interval with how many there were."""

    def __init__(self, metrics: Metrics, interval: float = REJECTION_REPORT_INTERVAL) -> None:
        self._metrics = metrics
        self._log = oplog.get()
        self._interval = interval
        self._reported_at = -interval
        self._unreported = 0

    def count(self, status: int) -> None:
        self._metrics.requests.labels(str(status)).inc()

    def __call__(self, status: int, error: str, detail: str, client: str | None) -> None:
        self.count(status)
        self._metrics.rejected.labels(error).inc()
        self._unreported += 1
        now = time.monotonic()
        if now - self._reported_at < self._interval:
            return
        self._log.warning(
            "client_request_rejected",
            status=status,
            error=error,
            detail=detail,
            client=client,
            count=self._unreported,
        )
        self._reported_at = now
        self._unreported = 0


def classify_parse_error(error: HttpProcessingError, limits: LimitsConfig) -> tuple[int, str, str]:
    """Status, error name and a detail for a request aiohttp could not parse.

    The detail never repeats what the client sent: it may hold secrets or terminal escapes.
    """
    if isinstance(error, LineTooLong):
        detail = f"the request line or a header field exceeds {limits.max_header_size} bytes"
        return 431, "request_header_too_large", detail
    if isinstance(error, BadHttpMessage) and error.message.startswith(_TOO_MANY_HEADERS):
        return 431, "too_many_headers", f"more than {limits.max_headers} header fields"
    if isinstance(error, BadStatusLine):  # BadHttpMethod included
        return 400, "bad_request", "malformed request line"
    if isinstance(error, InvalidURLError):
        return 400, "bad_request", "invalid request target"
    if isinstance(error, InvalidHeader):
        return 400, "bad_request", "invalid header field"
    # llhttp's own reason comes first ("Invalid character in Content-Length"), then a colon
    # and the offending bytes, which are left out.
    reason = error.message.split(":", 1)[0].strip().rstrip(".")[:100]
    return 400, "bad_request", reason or "malformed request"


def _target_problem(request: web.BaseRequest) -> tuple[int, str, str] | None:
    """Why this request must not be forwarded, or None."""
    if request.version not in SERVED_VERSIONS:
        # llhttp lets an HTTP/0.9 line or an "HTTP/2.0" one through; relayed, the primary's
        # answer would go back under that version's status line. (This answer's status line
        # is in the request's version too: aiohttp writes it so.)
        detail = "only HTTP/1.0 and HTTP/1.1 are served"
        return 505, "http_version_not_supported", detail
    target = request.raw_path
    # Besides paths, the asterisk-form: OPTIONS about the server as a whole (RFC 9112,
    # section 3.2.4).
    if not target.startswith("/") and not (target == "*" and request.method == "OPTIONS"):
        detail = "the request target must be a path (origin-form), such as /items?page=2"
        return 400, "bad_request", detail
    codings = request.headers.getall("Transfer-Encoding", [])
    if codings and [c.strip().lower() for c in ",".join(codings).split(",")] != ["chunked"]:
        # RFC 9112 section 6.1: a coding the server does not implement gets 501; forwarding
        # the body without it would hand the primary bytes it cannot read.
        return 501, "unsupported_transfer_coding", "only Transfer-Encoding: chunked is supported"
    if websocket.is_upgrade(request) and not web.WebSocketResponse().can_prepare(request):
        # Checked here: aiohttp would refuse it only after the primary accepted the upgrade.
        return 400, "bad_request", "invalid WebSocket handshake (Sec-WebSocket-Key or -Version)"
    return None


def guard_requests(handler: Handler, rejected: RejectionLog) -> Handler:
    """``handler``, behind the checks every request must pass before it is forwarded."""

    async def guarded(request: web.BaseRequest) -> web.StreamResponse:
        problem = _target_problem(request)
        if problem is None:
            return await handler(request)
        status, error, detail = problem
        rejected(status, error, detail, request.remote)
        request_id = request_id_of(request.headers)
        response = error_response(status, error, detail, request_id)
        response.force_close()
        return response

    return guarded


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler with a request-head deadline and quiet, short answers to
    requests that cannot be parsed."""

    __slots__ = ("_head_timer", "_header_timeout", "_limits", "_rejected")

    def __init__(
        self,
        manager: web.Server,
        *,
        limits: LimitsConfig,
        rejected: RejectionLog,
        loop: asyncio.AbstractEventLoop,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            manager,
            loop=loop,
            keepalive_timeout=limits.idle_timeout,
            max_line_size=limits.max_header_size,
            max_field_size=limits.max_header_size,
            max_headers=limits.max_headers,
            **kwargs,
        )
        self._limits = limits
        self._header_timeout = limits.header_timeout
        self._rejected = rejected
        self._head_timer: asyncio.TimerHandle | None = None

    def _awaiting_head(self) -> bool:
        """True while the connection waits for a request head: before the first one, and
        between requests (aiohttp's handler then waits on ``_waiter``)."""
        if self._request_count == 0:
            return True
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def data_received(self, data: bytes) -> None:
        awaiting = self._awaiting_head()
        parsed_before = self._request_count
        super().data_received(data)
        if self._request_count == parsed_before:
            if awaiting and data and self._head_timer is None and self.transport is not None:
                self._head_timer = self._loop.call_later(self._header_timeout, self._head_timed_out)
            return
        self._disarm()  # a head is complete (or could not be parsed and is answered)
        if not awaiting and not isinstance(self._messages[-1][0], RawRequestMessage):
            self._body_unparsable()

    def _body_unparsable(self) -> None:
        """The body of the request under way broke off into something that is not HTTP (a bad
        chunk size, say). aiohttp queues an error for it but leaves that request's body waiting
        for bytes that never come; fail the body instead, so the handler stops forwarding it
        and answers, and close the connection after that answer."""
        error = web.RequestPayloadError("the request body is malformed")
        request = self._current_request
        if request is not None and not request.content.is_eof():
            request.content.set_exception(error)
        for message, payload in self._messages:
            if isinstance(message, RawRequestMessage) and not payload.is_eof():
                payload.set_exception(error)
        self.close()

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is None or not self._awaiting_head() or self._messages:
            return
        detail = f"the request head did not arrive within {self._header_timeout:g} s"
        peer = transport.get_extra_info("peername")
        self._rejected(408, "request_timeout", detail, str(peer[0]) if peer else None)
        transport.write(REQUEST_TIMEOUT_ANSWER)
        self.force_close()

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        """aiohttp reports connection-level failures here (a client gone mid-request, a body
        that broke off); they are the client's doing, so a line at debug level, no traceback."""
        error = kwargs.get("exc_info")
        message = str(args[0]) % args[1:] if args else "connection error"
        oplog.get().debug("client_connection_error", message=message, error=repr(error))

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The answer to a request that failed before the proxy's handler could answer it:
        one that could not be parsed, a client that went away, or (a bug) an exception out of
        the handler."""
        if isinstance(exc, ConnectionError):
            # The client closed its connection before its answer could be written: its doing,
            # counted as nginx does (499), and nothing to answer.
            self._rejected(499, "client_aborted", "the client went away", request.remote)
            raise exc
        if not isinstance(exc, HttpProcessingError):
            oplog.get().error("request_failed", status=status, error=repr(exc), exc_info=exc)
        if request.writer.output_size > 0:
            raise ConnectionError("the response has begun; the connection is dropped instead")
        if isinstance(exc, HttpProcessingError):
            status, error, detail = classify_parse_error(exc, self._limits)
            self._rejected(status, error, detail, request.remote)
        else:
            error, detail = "internal_error", "the proxy could not handle this request"
            if status == 504:
                error, detail = "gateway_timeout", "the request took too long"
            self._rejected.count(status)
        response = error_response(status, error, detail, new_request_id())
        response.force_close()
        return response


class GuardedServer(web.Server):
    """aiohttp's low-level server, making `GuardedRequestHandler` connections.

    The limits apply to connections accepted after `configure`; open ones keep theirs.
    """

    def __init__(
        self, handler: Handler, *, limits: LimitsConfig, metrics: Metrics, **kwargs: Any
    ) -> None:
        self._rejected = RejectionLog(metrics)
        super().__init__(guard_requests(handler, self._rejected), **kwargs)
        self._limits = limits
        self._handler_kwargs = kwargs

    def configure(self, limits: LimitsConfig) -> None:
        self._limits = limits

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(
            self,
            limits=self._limits,
            rejected=self._rejected,
            loop=asyncio.get_running_loop(),
            logger=LISTENER_LOGGER,
            **self._handler_kwargs,
        )
