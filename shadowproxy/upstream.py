"""Connections to the backends: one connection pool per backend, and failure kinds.

HTTP requests go through `shadowproxy.pool`; aiohttp's client session remains for what the
pool does not speak (WebSocket upgrades).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from shadowproxy import tlsfiles
from shadowproxy.bounded import BoundedCopy
from shadowproxy.config import Backend
from shadowproxy.exchange import Failure, FailureKind, Response
from shadowproxy.pool import (
    ConnectFailed,
    ConnectionClosed,
    InvalidResponse,
    Pool,
    Timing,
    UpstreamResponse,
)

# Headers aiohttp would add on its own; the backend must see only what the client sent.
SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
READ_CHUNK = 64 * 1024
# Shared by every request: aiohttp only reads it.
_SKIP_ALL: CIMultiDict[None] = CIMultiDict((name, None) for name in sorted(SKIP_AUTO_HEADERS))


class PassthroughRequest(aiohttp.ClientRequest):
    """A request that adds none of the headers aiohttp adds when they are missing.

    aiohttp works out per request which of Accept, Accept-Encoding and User-Agent to add,
    sorting and copying the skip list and copying the headers to do so; here the answer is
    always "none of them", so it is worked out once. The skip list is kept where aiohttp looks
    for it later (Content-Type for a body). tests/test_upstream_sessions.py checks that nothing
    is added, should aiohttp's internals change.
    """

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        self._skip_auto_headers = _SKIP_ALL


def tls_context(backend: Backend, name: str) -> ssl.SSLContext | None:
    """Verification on by default; a custom CA bundle and a client certificate when set.
    ``name`` is the backend's key in the config, which errors name."""
    if not backend.url.startswith("https://"):
        return None
    tls = backend.tls
    if tls.ca_file is None:
        context = ssl.create_default_context()
    else:  # that bundle only, not the system's too
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tlsfiles.load_ca(context, tls.ca_file, f"{name}.tls.ca_file")
    if tls.cert_file is not None:
        tlsfiles.load_pair(context, tls.cert_file, tls.key_file, f"{name}.tls")
    if tls.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def server_hostname(backend: Backend) -> str | None:
    """The name sent as SNI and checked in the certificate, when not the URL's host."""
    if not backend.url.startswith("https://"):
        return None
    name = backend.tls.server_name or backend.host
    return name.rsplit(":", 1)[0] if name else None


def request_options(backend: Backend) -> dict[str, Any]:
    """Per-request keyword arguments that follow from the backend's config."""
    name = server_hostname(backend)
    return {"server_hostname": name} if name else {}


def make_pool(
    backend: Backend,
    *,
    name: str,
    timing: Timing,
    on_connect: Callable[[], object] | None = None,
) -> Pool:
    """The connection pool for one backend (``name``: its key in the config), with its TLS
    settings."""
    return Pool(
        backend,
        timing=timing,
        ssl_context=tls_context(backend, name),
        server_hostname=server_hostname(backend),
        on_connect=on_connect,
    )


def make_session(
    backend: Backend,
    *,
    name: str,
    stream_timeout: bool,
    trace_configs: list[aiohttp.TraceConfig] | None = None,
) -> aiohttp.ClientSession:
    """A session with its own pool; bodies pass through undecoded, cookies are not kept.

    ``stream_timeout`` bounds each read instead of the whole exchange, so a large download
    from the primary is limited by idleness, not by its length.
    """
    connector: aiohttp.BaseConnector
    if backend.unix_socket is not None:
        connector = aiohttp.UnixConnector(
            path=backend.unix_socket,
            limit=backend.max_connections,
            keepalive_timeout=backend.keepalive_timeout,
        )
    else:
        connector = aiohttp.TCPConnector(
            limit=backend.max_connections,
            limit_per_host=0,
            keepalive_timeout=backend.keepalive_timeout,
            ttl_dns_cache=60,
            ssl=tls_context(backend, name) or True,
        )
    if stream_timeout:
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=backend.connect_timeout, sock_read=backend.timeout
        )
    else:
        timeout = aiohttp.ClientTimeout(total=backend.timeout, sock_connect=backend.connect_timeout)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=SKIP_AUTO_HEADERS,
        request_class=PassthroughRequest,
        trust_env=False,
        read_bufsize=READ_CHUNK,
        trace_configs=trace_configs,
    )


def target_url(backend: Backend, raw_path: str) -> URL:
    """The backend URL for a raw client path; percent-encoding is kept exactly as received."""
    return URL(backend.base_url + raw_path, encoded=True)


# Answers that are streams by nature: compared over what arrives in a bounded window.
STREAMING_TYPES = frozenset(
    {
        "text/event-stream",
        "application/x-ndjson",
        "application/stream+json",
        "multipart/x-mixed-replace",
    }
)


def is_streaming(content_type: str | None) -> bool:
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() in STREAMING_TYPES


def classify(error: BaseException) -> FailureKind:
    """Name a failure the way the log and the metrics do."""
    if isinstance(error, TimeoutError):
        return FailureKind.TIMEOUT
    if isinstance(error, ConnectFailed | aiohttp.ClientConnectorError | ConnectionRefusedError):
        return FailureKind.REFUSED
    if isinstance(error, InvalidResponse | aiohttp.ClientResponseError):
        return FailureKind.INVALID_RESPONSE
    if isinstance(
        error,
        ConnectionClosed
        | aiohttp.ServerDisconnectedError
        | aiohttp.ClientPayloadError
        | aiohttp.ClientOSError
        | ConnectionError,
    ):
        return FailureKind.RESET
    return FailureKind.INVALID_RESPONSE


async def fetch(
    pool: Pool,
    raw_path: str,
    *,
    method: str,
    headers: CIMultiDict[str],
    body: bytes,
    deadline: float,
    capture_bytes: int,
) -> Response | Failure:
    """Send one mirrored request and read the answer within ``deadline`` seconds.

    The body is kept up to ``capture_bytes`` and not read past it (see `_read_body`): the
    connection is then closed, not reused.
    """
    started = time.perf_counter()
    ends_at = asyncio.get_running_loop().time() + deadline
    try:
        response = await pool.request(method, raw_path, headers, body, deadline=ends_at)
    except Exception as error:  # every failure of the candidate is an outcome, not a crash
        return _failure(error, started)
    try:
        if response.complete:
            # The whole answer came with its head, as most small answers do.
            body_read = response.body_nowait()
            size = len(body_read)
            kept = body_read[:capture_bytes] if size > capture_bytes else body_read
            cut, size_known = False, True
        else:
            kept, size, cut, size_known = await _read_body(response, capture_bytes)
    except Exception as error:
        return _failure(error, started)
    finally:
        response.release()
    return Response(
        status=response.status,
        headers=response.headers,
        body=kept,
        size=size,
        latency_ms=(time.perf_counter() - started) * 1000,
        truncated=cut or size > len(kept),
        size_known=size_known,
    )


async def _read_body(
    response: UpstreamResponse, capture_bytes: int
) -> tuple[bytes, int, bool, bool]:
    """The body kept up to ``capture_bytes``, its whole size, and whether it was cut.

    Nothing is read past ``capture_bytes``: such a body cannot be compared whole, and reading
    it to its end let a candidate that floods its answer take the proxy's CPU. A stream is cut
    there; a body with a Content-Length is cut with that as its size (so it still compares by
    size and prefix with a primary's as large); any other is cut with its size unknown, and
    compares by prefix only. The last item says whether the size is known.
    """
    copy = BoundedCopy(capture_bytes)
    if is_streaming(response.header("Content-Type")):
        # A stream may never end: what arrived by the deadline (or up to the capture cap)
        # is the answer, not a timeout.
        try:
            while chunk := await response.read_chunk():
                copy.add(chunk)
                if copy.kept >= capture_bytes:
                    return copy.body(), copy.size, True, True
        except TimeoutError:
            return copy.body(), copy.size, True, True
        return copy.body(), copy.size, False, True
    while chunk := await response.read_chunk():
        copy.add(chunk)
        if copy.size > capture_bytes:
            declared = response.header("Content-Length")
            if declared is None:
                return copy.body(), copy.size, True, False
            return copy.body(), int(declared), True, True
    return copy.body(), copy.size, False, True


def _failure(error: BaseException, started: float) -> Failure:
    elapsed = (time.perf_counter() - started) * 1000
    return Failure(kind=classify(error), detail=_describe(error), latency_ms=elapsed)


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."
