"""HTTP/1.1 to one backend: a pool of keep-alive connections, answers parsed by llhttp.

Every proxied request crosses this client once for the primary and once more for each
mirror, so it is kept lean: one asyncio protocol per connection, the C parser of httptools,
the request head written in one piece, and no per-request object that is not needed.
aiohttp's client spent about three times the CPU per request on the same work.

One request runs on a connection at a time. Its phases are visible in `Phase`: the head is
awaited, the body arrives (all of it with the head, for most small answers), then the
connection goes back to the pool when the answer was whole and both sides keep it alive.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import ipaddress
import os
import re
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Final, cast

import httptools
from multidict import CIMultiDict
from yarl import URL

from shadowproxy.config import Backend
from shadowproxy.exchange import Headers, first_header

# Reading from a backend pauses when this much of its body waits for a slow reader,
# and resumes below the low mark: memory per connection stays bounded.
HIGH_WATER: Final = 64 * 1024
LOW_WATER: Final = 16 * 1024
# An answer's head (status line and headers) larger than this is refused, as are more
# header fields than MAX_HEADERS: a broken backend must not grow the proxy's memory.
MAX_HEAD_BYTES: Final = 64 * 1024
MAX_HEADERS: Final = 256
# Control bytes (tab aside) in a reason or a header value: the parser lets them through, as it
# does other unusual bytes, but they cannot be passed on (RFC 9110, section 5.5).
CONTROL_BYTES: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Methods whose request means something with a body: an empty one is sent as
# ``Content-Length: 0`` so the backend does not wait for one (RFC 9110, section 8.6).
BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
# A request may be sent again on a new connection when a reused one turned out closed before
# any byte of the answer came back: the backend closed it while idle. Only for these.
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
NO_BODY_STATUSES: Final = frozenset({204, 304})
# A bytes body up to this size is sent in one write with its head (one packet); a larger one
# is written as it is, not copied.
JOIN_BYTES: Final = 64 * 1024
# How long a backend's resolved addresses are used before the name is resolved again (as
# aiohttp's client did); a failed connection forgets them at once.
DNS_TTL: Final = 60.0


class UpstreamError(Exception):
    """The backend gave no usable answer."""


class ConnectFailed(UpstreamError):
    """No connection to the backend: refused, unreachable, name unknown, TLS refused."""


class InvalidResponse(UpstreamError):
    """The backend's answer is not valid HTTP/1.1, or its head is too large."""


class ConnectionClosed(UpstreamError):
    """The backend closed the connection before its answer was whole."""


class Phase(enum.Enum):
    HEAD = "head"
    """Request sent (or being sent); the status line and headers not yet here."""
    BODY = "body"
    """Head here; the body arriving."""
    DONE = "done"
    """The whole answer is here."""
    FAILED = "failed"
    """Timed out, refused by the parser, cut off by the backend, or the request body failed."""


class Timing(enum.Enum):
    """How the backend's timeout applies to a request."""

    TOTAL = "total"
    """The whole exchange, head and body, within the timeout: a mirrored request."""
    IDLE = "idle"
    """Each wait for the backend within the timeout: a primary's download may take long."""


class UpstreamResponse:
    """One request on one connection, and the answer as it arrives.

    The connection's parser calls the ``on_*`` methods; the caller reads ``status``, ``reason``,
    ``headers`` and the body, then calls `release`.
    """

    __slots__ = (
        "_awaiting_client",
        "_chunks",
        "_connection",
        "_deadline",
        "_error",
        "_feeding",
        "_head",
        "_head_bytes",
        "_informational",
        "_is_head",
        "_keep_alive",
        "_last_activity",
        "_loop",
        "_paused",
        "_raw_headers",
        "_reason",
        "_released",
        "_sender",
        "_timer",
        "_timing",
        "_waiter",
        "answered",
        "buffered",
        "head_not_utf8",
        "headers",
        "parser",
        "phase",
        "reason",
        "request_sent",
        "status",
    )

    def __init__(self, connection: _Connection, *, is_head: bool) -> None:
        self._connection = connection
        self._loop = connection.loop
        self._is_head = is_head
        self.parser = connection.parser
        self.phase = Phase.HEAD
        self.status = 0
        self.reason = ""
        self.headers: Headers = ()
        self.head_not_utf8 = False
        """The reason or a header field has bytes that are not UTF-8 text (``headers`` holds
        them as lone surrogates, ``reason`` as ISO-8859-1): a writer of text would alter them."""
        self.buffered = 0
        self.answered = False
        """Some byte of the answer arrived."""
        self.request_sent = False
        self._head: asyncio.Future[None] = self._loop.create_future()
        self._reason = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._feeding = 0
        self._informational = False
        self._keep_alive = False
        self._chunks: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._paused = False
        self._awaiting_client = False
        self._released = False
        self._sender: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timing = Timing.TOTAL
        self._deadline = 0.0
        self._last_activity = 0.0

    # -- the parser's callbacks --------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.phase is not Phase.HEAD:
            # A second answer in the same read as the first: the backend speaks out of turn.
            # What follows is ignored, and the connection is not used again.
            self._keep_alive = False

    def on_status(self, status: bytes) -> None:
        if self.phase is Phase.HEAD:
            self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.phase is Phase.HEAD:
            if CONTROL_BYTES.search(value) is not None:
                raise InvalidResponse("a header value of the answer holds a control character")
            self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.phase is not Phase.HEAD:
            return
        if self._head_bytes + self._feeding > MAX_HEAD_BYTES:
            # Only a head that may be this large is measured exactly.
            size = len(self._reason) + sum(len(n) + len(v) for n, v in self._raw_headers)
            if size > MAX_HEAD_BYTES:
                raise InvalidResponse("the answer's head is too large")
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            # 100 Continue, 103 Early Hints: the real answer follows on the same stream.
            self._informational = True
            self._raw_headers.clear()
            self._reason = b""
            self._head_bytes = 0
            return
        if status < 100:
            raise InvalidResponse(f"the answer's status {status:03d} is below 100")
        if CONTROL_BYTES.search(self._reason) is not None:
            raise InvalidResponse("the answer's reason holds a control character")
        self.status = status
        self.reason = self._reason.decode("latin-1")
        if len(self._raw_headers) > MAX_HEADERS:
            raise InvalidResponse("the answer has too many header fields")
        try:
            self.headers = tuple([(n.decode(), v.decode()) for n, v in self._raw_headers])
            self.head_not_utf8 = not self._reason.isascii()
        except UnicodeDecodeError:
            self.headers = tuple(
                [
                    (n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
                    for n, v in self._raw_headers
                ]
            )
            self.head_not_utf8 = True
        self._keep_alive = self.parser.should_keep_alive()
        self.phase = Phase.BODY
        if self._is_head or status in NO_BODY_STATUSES:
            # No body follows, whatever Content-Length says; llhttp knows that for 204 and
            # 304 but cannot be told about HEAD: the connection gets a fresh parser after.
            self.on_message_complete()
        if not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.phase is not Phase.BODY:
            return
        self._chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self._paused:
            self._paused = True
            self._connection.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self.phase is not Phase.BODY:
            return
        self.phase = Phase.DONE
        self._stop_timer()
        self._wake()

    # -- what the connection reports ---------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self.phase is Phase.DONE or self.phase is Phase.FAILED:
            # Bytes after a whole answer: the backend speaks out of turn; never reuse this.
            self._keep_alive = False
            return
        self._last_activity = self._loop.time()
        self.answered = True
        self._feeding = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            self.fail(cause if isinstance(cause, UpstreamError) else InvalidResponse(str(error)))
            return
        except httptools.HttpParserError as error:
            self.fail(InvalidResponse(f"the answer is not valid HTTP: {error}"))
            return
        except httptools.HttpParserUpgrade:
            # A 101 that switches protocols: this client never asks for one (WebSockets take
            # another path), and llhttp stops at it. Left to escape, the error would kill the
            # transport and pass for a backend that closed the connection.
            self.fail(InvalidResponse("the answer switches protocols, which nobody asked for"))
            return
        if self.phase is Phase.HEAD:
            # The parser holds an unfinished head in memory: bound it.
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self.fail(InvalidResponse("the answer's head is too large"))

    def closed(self, error: BaseException | None) -> None:
        """The connection is gone; an answer that runs until the connection closes is whole."""
        if self.phase is Phase.BODY and self._ends_with_connection():
            self._keep_alive = False
            self.phase = Phase.DONE
            self._stop_timer()
            self._wake()
            return
        if self.phase is Phase.HEAD:
            self.fail(ConnectionClosed("the backend closed the connection before answering"))
        elif self.phase is Phase.BODY:
            self.fail(ConnectionClosed("the backend closed the connection mid-answer"))

    def fail(self, error: BaseException) -> None:
        if self.phase is Phase.DONE or self.phase is Phase.FAILED:
            return
        self.phase = Phase.FAILED
        self._error = error
        self._stop_timer()
        if not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # retrieved: a failure nobody awaits is not an error
        self._wake()
        self._connection.close()

    # -- timing ------------------------------------------------------------------------

    def start_timer(self, timing: Timing, timeout: float, deadline: float | None) -> None:
        self._timing = timing
        now = self._loop.time()
        if timing is Timing.TOTAL:
            self._deadline = deadline if deadline is not None else now + timeout
            self._timer = self._loop.call_at(self._deadline, self._time_out)
        else:
            self._deadline = timeout
            self._last_activity = now
            self._timer = self._loop.call_at(now + timeout, self._time_out)

    def _time_out(self) -> None:
        self._timer = None
        if self._timing is Timing.IDLE:
            # Cheaper than moving a timer on every read: look back when it fires. While its
            # reading is paused or the client's next body piece is awaited, the backend owes
            # nothing.
            waiting_elsewhere = self._paused or self._awaiting_client
            waited_since = self._loop.time() if waiting_elsewhere else self._last_activity
            due = waited_since + self._deadline
            if due > self._loop.time() or waiting_elsewhere:
                self._timer = self._loop.call_at(due, self._time_out)
                return
        self.fail(TimeoutError())

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- what the caller uses ----------------------------------------------------------

    async def head(self) -> None:
        await self._head

    @property
    def complete(self) -> bool:
        """The whole body is here."""
        return self.phase is Phase.DONE

    def header(self, name: str) -> str | None:
        return first_header(self.headers, name)

    def body_nowait(self) -> bytes:
        """The body that has arrived and not been read yet."""
        chunks = self._chunks
        body = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._consumed(len(body))
        return body

    async def read_chunk(self) -> bytes:
        """The next piece of the body; ``b""`` at its end. Raises what ended it early."""
        while not self._chunks:
            if self.phase is Phase.DONE:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._consumed(len(chunk))
        return chunk

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self.read_chunk():
            yield chunk

    def release(self) -> None:
        """Done with the answer: the connection goes back to the pool when reusable."""
        if self._released:
            return
        self._released = True
        self._stop_timer()
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
        reusable = self.phase is Phase.DONE and self._keep_alive and self.request_sent
        if self._paused:
            # A whole answer left partly unread must not leave its connection deaf.
            self._paused = False
            self._connection.resume_reading()
        self._connection.finished(self, reusable=reusable)

    # -- internals ---------------------------------------------------------------------

    @property
    def expects_body_after_head(self) -> bool:
        """The parser may still wait for a body this answer does not have (HEAD)."""
        return self._is_head

    def attach_sender(self, sender: asyncio.Task[None]) -> None:
        self._sender = sender

    def awaiting_client(self, waiting: bool) -> None:
        """The request body's next piece is awaited from the client (True), or came (False):
        a client that pauses its upload is not a backend that is slow to answer."""
        self._awaiting_client = waiting
        if not waiting:
            self._last_activity = self._loop.time()

    def sending(self) -> None:
        """A piece of the request body went out: while the client uploads, the backend is not
        the one keeping the exchange waiting."""
        self._last_activity = self._loop.time()

    def _consumed(self, size: int) -> None:
        self.buffered -= size
        if self._paused and self.buffered < LOW_WATER:
            self._paused = False
            self._last_activity = self._loop.time()
            self._connection.resume_reading()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _ends_with_connection(self) -> bool:
        for name, _ in self._raw_headers:
            lowered = name.lower()
            if lowered == b"content-length" or lowered == b"transfer-encoding":
                return False
        return True


def _new_parser(protocol: _Connection) -> httptools.HttpResponseParser:
    parser = httptools.HttpResponseParser(protocol)
    # Tolerate what aiohttp's client tolerated of backends: bare LF line ends, spaces
    # after a chunk size, unusual bytes in header values.
    parser.set_dangerous_leniencies(
        lenient_headers=True,
        lenient_optional_cr_before_lf=True,
        lenient_spaces_after_chunk_size=True,
    )
    return parser


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one `UpstreamResponse` at a time.

    Its parser lives as long as it does (llhttp starts over after each whole answer) and
    hands each callback to the answer under way: building a parser per request cost more
    than all the callbacks of a small answer.
    """

    def __init__(self, pool: Pool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.parser = _new_parser(self)
        self.transport: asyncio.Transport | None = None
        self.is_closed = False
        self.reused = False
        self.idle_since = 0.0
        self.current: UpstreamResponse | None = None
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._spare: socket.socket | None = None
        """A second handle on the socket while a request body streams out (`keep_spare`)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio's; they have the same methods.
        self.transport = cast(asyncio.Transport, transport)

    # -- the parser's callbacks, for the answer under way --------------------------------

    def on_message_begin(self) -> None:
        if self.current is not None:
            self.current.on_message_begin()

    def on_status(self, status: bytes) -> None:
        if self.current is not None:
            self.current.on_status(status)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.current is not None:
            self.current.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.current is not None:
            self.current.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self.current is not None:
            self.current.on_body(body)

    def on_message_complete(self) -> None:
        if self.current is not None:
            self.current.on_message_complete()

    # -- the transport's callbacks -------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        current = self.current
        if current is None:
            # An idle connection the backend talks on (a 408 before closing) is not reusable.
            self.close()
            return
        current.feed(data)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_closed = True
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(ConnectionClosed("the backend closed the connection"))
            self._drained.exception()
        current = self.current
        if current is not None and exc is not None:
            self._read_leftover(current)
        self._drop_spare()
        if current is not None:
            current.closed(exc)
        else:
            self.pool._discard(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def drain(self) -> None:
        if self.is_closed:
            raise ConnectionClosed("the backend closed the connection")
        if self._write_paused:
            self._drained = self.loop.create_future()
            await self._drained

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.is_closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.is_closed:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.is_closed:
            self.transport.close()

    def keep_spare(self) -> None:
        """Hold a second handle on the socket while a request body streams out.

        A backend may answer before reading the body (an early 413) and close with the body
        unread: a reset. A write that meets the reset before the answer was read fails, and
        the transport closes its own handle at once; the spare one still reads the answer from
        the kernel's buffer (`_read_leftover`). Not over TLS, whose bytes only the transport
        can read.
        """
        if self._spare is not None or self.pool.tls or self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return
        try:
            self._spare = socket.socket(fileno=os.dup(sock.fileno()))
        except OSError:
            return  # out of file descriptors: the exchange goes on without it

    def _read_leftover(self, current: UpstreamResponse) -> None:
        """Feed what the backend sent before a failure closed the transport (`keep_spare`)."""
        spare = self._spare
        if spare is None:
            return
        spare.setblocking(False)
        while current.phase is Phase.HEAD or current.phase is Phase.BODY:
            try:
                data = spare.recv(HIGH_WATER)
            except OSError:
                return
            if not data:
                return
            current.feed(data)

    def _drop_spare(self) -> None:
        if self._spare is not None:
            self._spare.close()
            self._spare = None

    def finished(self, response: UpstreamResponse, *, reusable: bool) -> None:
        if self.current is response:
            self.current = None
        self._drop_spare()
        self.reused = True
        if reusable and not self.is_closed and not self.transport_closing():
            if response.expects_body_after_head:
                self.parser = _new_parser(self)
            self.pool._put_back(self)
        else:
            self.close()
            self.pool._discard(self)

    def transport_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()


Body = bytes | AsyncIterator[bytes] | None


class Pool:
    """Keep-alive connections to one backend, at most ``max_connections`` of them."""

    def __init__(
        self,
        backend: Backend,
        *,
        timing: Timing,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        on_connect: Callable[[], object] | None = None,
    ) -> None:
        """``on_connect`` is called for each new connection (a metric of connection churn)."""
        self.backend = backend
        self._on_connect = on_connect
        self.timing = timing
        self._ssl = ssl_context
        self.tls = ssl_context is not None
        self._server_hostname = server_hostname
        self._unix = backend.unix_socket
        self._literal = True
        self._resolved: list[str] = []
        self._resolved_until = 0.0
        self.authorization: str | None = None
        if self._unix is not None:
            self._host, self._port = "", 0
            self.default_host = "localhost"
            self.prefix = backend.base_url.removeprefix("http://localhost")
        else:
            url = URL(backend.url)
            # The config checked the URL: it has a host, and yarl knows the scheme's port.
            self._host, self._port = url.host or "", url.port or 80
            self._literal = _is_address(self._host)
            self.default_host = url.host_port_subcomponent or self._host
            self.prefix = url.raw_path.rstrip("/")
            if url.user is not None:
                # Credentials in the URL, as in curl: sent when the client sent none.
                credentials = f"{url.user}:{url.password or ''}".encode()
                self.authorization = "Basic " + base64.b64encode(credentials).decode("ascii")
        self._limit = backend.max_connections
        self._timeout = backend.timeout
        self._connect_timeout = backend.connect_timeout
        self._keepalive = backend.keepalive_timeout
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._connecting = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def open_connections(self) -> int:
        return len(self._open) + self._connecting

    def target(self, raw_path: str) -> str:
        """The request target for a raw client path: percent-encoding kept as received. ``*``
        (``OPTIONS *``) names the server, not a path: no prefix goes before it."""
        return self.prefix + raw_path if self.prefix and raw_path != "*" else raw_path

    async def request(
        self,
        method: str,
        raw_path: str,
        headers: CIMultiDict[str],
        body: Body = None,
        *,
        deadline: float | None = None,
    ) -> UpstreamResponse:
        """Send one request; return when the answer's head is here.

        ``deadline`` (event-loop time) ends a `Timing.TOTAL` request earlier than the
        backend's timeout. The caller must `UpstreamResponse.release` what it gets.
        """
        loop = asyncio.get_running_loop()
        if self.timing is Timing.TOTAL and deadline is None:
            deadline = loop.time() + self._timeout
        # Tests against bytes, not the AsyncIterator ABC: ten times cheaper, on every request.
        replayable = (body is None or isinstance(body, bytes)) and method in IDEMPOTENT
        head, chunked = _request_head(method, self.target(raw_path), headers, body, self)
        retried = False
        while True:
            connection = None if retried else self._idle_connection(loop)
            if connection is None:
                # After a stale connection the slot it held is free: a new one may open.
                connection = await self._new_connection(loop, deadline)
            reused = connection.reused
            response = UpstreamResponse(connection, is_head=method == "HEAD")
            connection.current = response
            response.start_timer(self.timing, self._timeout, deadline)
            if body is None or isinstance(body, bytes):
                if body is not None and len(body) > JOIN_BYTES:
                    # The caller's own object goes out: joined to the head it would be a
                    # copy, held besides the caller's while a slow backend reads it.
                    connection.write(head)
                    connection.write(body)
                else:
                    connection.write(head + body if body else head)
                response.request_sent = True
            else:
                connection.write(head)
                response.attach_sender(
                    loop.create_task(_send_body(connection, response, body, chunked))
                )
            try:
                await response.head()
            except ConnectionClosed:
                response.release()
                if reused and replayable and not response.answered and not retried:
                    retried = True  # closed by the backend while idle: once more, afresh
                    continue
                raise
            except BaseException:
                response.release()
                raise
            return response

    async def close(self) -> None:
        """Close every connection; answers still being read end as closed."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self._open):
            connection.close()
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ConnectFailed("the pool is closed"))
                waiter.exception()

    # -- connections -------------------------------------------------------------------

    def _idle_connection(self, loop: asyncio.AbstractEventLoop) -> _Connection | None:
        idle = self._idle
        now = loop.time()
        while idle:
            connection = idle.pop()
            if connection.is_closed or connection.transport_closing():
                self._discard(connection)
                continue
            if now - connection.idle_since >= self._keepalive:
                connection.close()
                self._discard(connection)
                continue
            return connection
        return None

    async def _new_connection(
        self, loop: asyncio.AbstractEventLoop, deadline: float | None
    ) -> _Connection:
        if self._closed:
            raise ConnectFailed("the pool is closed")
        # A request beyond max_connections waits for a slot as long as it would wait for an
        # answer (the backend's timeout, or the request's deadline); connecting then has
        # the connect timeout.
        now = loop.time()
        waits_until = deadline if deadline is not None else now + self._timeout
        if self.open_connections >= self._limit:
            async with asyncio.timeout_at(waits_until):
                while self.open_connections >= self._limit:
                    waiter = loop.create_future()
                    self._waiters.append(waiter)
                    try:
                        await waiter
                    finally:
                        if waiter in self._waiters:
                            self._waiters.remove(waiter)
                    reusable = self._idle_connection(loop)
                    if reusable is not None:
                        return reusable
            if self._closed:
                raise ConnectFailed("the pool is closed")
        self._connecting += 1
        try:
            async with asyncio.timeout_at(min(loop.time() + self._connect_timeout, waits_until)):
                connection = await self._connect(loop)
        except BaseException:
            self._connecting -= 1
            self._wake_waiter()  # the slot this attempt held is free again
            raise
        self._connecting -= 1
        if self._on_connect is not None:
            self._on_connect()
        self._open.add(connection)
        return connection

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        def factory() -> _Connection:
            return _Connection(self, loop)

        try:
            if self._unix is not None:
                _, protocol = await loop.create_unix_connection(factory, self._unix)
                return protocol
            addresses = await self._addresses(loop)
        except OSError as error:
            raise ConnectFailed(f"cannot connect to {self.default_host}: {error}") from error
        # The certificate is checked against the name, not the address connected to.
        name = (self._server_hostname or self._host) if self._ssl else None
        failure: BaseException | None = None
        for address in addresses:
            try:
                _, protocol = await loop.create_connection(
                    factory, address, self._port, ssl=self._ssl, server_hostname=name
                )
                return protocol
            except (OSError, ssl.SSLError) as error:
                failure = error
        self._resolved_until = 0.0  # the name may point elsewhere by now
        raise ConnectFailed(f"cannot connect to {self.default_host}: {failure}") from failure

    async def _addresses(self, loop: asyncio.AbstractEventLoop) -> list[str]:
        """The backend's addresses, resolved at most once per `DNS_TTL` seconds.

        Resolving runs in a thread and, behind a cluster's search domains, may take
        milliseconds: a backend that closes its connections must not cost that per request.
        """
        if self._literal:
            return [self._host]
        now = loop.time()
        if now < self._resolved_until:
            return self._resolved
        infos = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
        resolved = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not resolved:
            raise OSError(f"no address for {self._host}")
        self._resolved, self._resolved_until = resolved, now + DNS_TTL
        return resolved

    def _put_back(self, connection: _Connection) -> None:
        if self._closed:
            connection.close()
            self._discard(connection)
            return
        connection.idle_since = connection.loop.time()
        self._idle.append(connection)
        if self._sweeper is None:
            self._sweeper = connection.loop.call_later(self._keepalive, self._sweep)
        self._wake_waiter()

    def _discard(self, connection: _Connection) -> None:
        if connection in self._open:
            self._open.discard(connection)
            if connection in self._idle:
                self._idle.remove(connection)
            self._wake_waiter()

    def _wake_waiter(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        """Close connections idle for longer than the keep-alive timeout."""
        self._sweeper = None
        if not self._idle:
            return
        loop = self._idle[0].loop
        now = loop.time()
        for connection in [c for c in self._idle if now - c.idle_since >= self._keepalive]:
            connection.close()
            self._discard(connection)
        if self._idle:
            oldest = min(c.idle_since for c in self._idle)
            self._sweeper = loop.call_at(oldest + self._keepalive, self._sweep)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _request_head(
    method: str, target: str, headers: CIMultiDict[str], body: Body, pool: Pool
) -> tuple[bytes, bool]:
    """The request line and headers, and whether the body goes chunked.

    The client's headers are kept in order and case; the proxy adds only the framing the
    body needs and, when the client sent none, ``Host``.
    """
    extra: list[str] = []
    chunked = False
    if "Host" not in headers:
        extra.append(f"Host: {pool.default_host}\r\n")
    if pool.authorization is not None and "Authorization" not in headers:
        extra.append(f"Authorization: {pool.authorization}\r\n")
    if body is not None and not isinstance(body, bytes):
        if "Content-Length" not in headers:
            chunked = True
            extra.append("Transfer-Encoding: chunked\r\n")
    elif body:
        length = str(len(body))
        if headers.get("Content-Length") != length:
            headers = headers.copy()
            headers.popall("Content-Length", None)
            extra.append(f"Content-Length: {length}\r\n")
    elif method in BODY_METHODS and "Content-Length" not in headers:
        extra.append("Content-Length: 0\r\n")
    fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    text = f"{method} {target} HTTP/1.1\r\n{fields}{''.join(extra)}\r\n"
    lines = len(headers) + len(extra) + 2
    if text.count("\n") != lines or text.count("\r") != lines:
        raise ValueError("the method, target or a header holds a line break")
    return text.encode("utf-8", "surrogateescape"), chunked


async def _send_body(
    connection: _Connection,
    response: UpstreamResponse,
    body: AsyncIterator[bytes],
    chunked: bool,
) -> None:
    """Stream a request body, chunked when its length is unknown; a failure of the body
    (the client's doing) or of the connection ends the exchange with that failure."""
    chunks = aiter(body)
    connection.keep_spare()
    try:
        while True:
            response.awaiting_client(True)
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            finally:
                response.awaiting_client(False)
            if not chunk:
                continue
            if chunked:
                connection.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            else:
                connection.write(chunk)
            response.sending()
            await connection.drain()
        if chunked:
            connection.write(b"0\r\n\r\n")
        response.request_sent = True
    except asyncio.CancelledError:
        raise
    except BaseException as error:
        response.fail(error)
