"""Captured exchanges as HAR 1.2 entries: building them, reading them back, exporting a document.

A capture file holds one HAR ``entry`` per line (JSON lines), so it can be appended to, rotated
and streamed; ``export`` wraps entries into a standard HAR document (``{"log": {"version":
"1.2", "creator", "entries"}}``) that browser developer tools open. Readers take both forms,
and HAR files exported by a browser too.

How bodies are written (decisions where HAR leaves room):

- Response ``content.text`` is the body without its Content-Encoding, as HAR prescribes and
  browsers write it; ``content.encoding`` is ``"base64"`` when the body is not UTF-8 text.
  When the body cannot be decoded, or only a prefix was kept, ``text`` holds the bytes as
  received, base64, and ``content._raw`` is true: the Content-Encoding header still applies.
- HAR has no ``encoding`` for ``postData``; a request body that is not UTF-8 text is written
  base64 with the custom field ``postData._encoding: "base64"`` and a comment saying so.
- A body cut at ``capture.max_body_bytes`` carries ``_truncated: true``. A cut request body
  is not written at all (the entry cannot be replayed); a cut response body keeps its prefix
  and its full size, and is compared as the mirror compares cut bodies (sizes, prefix).
- Redaction: secret headers (``logsafe.secret_header``: Authorization, Cookie, and any name
  holding auth, token, key, secret, password, signature, session or cookie) keep their name
  with the value ``[redacted]``; ``cookies`` lists are always empty; ``log.redact_query``
  parameters have the value ``[redacted]`` in ``url``, ``queryString``, ``redirectURL`` and
  the Location, Content-Location and Referer headers. Body places named by ``log.redact``
  are replaced in JSON and form bodies (a text body without a Content-Type is read as a
  form), listed in ``_redacted``. A body that may hold such places but cannot be inspected
  (multipart, declared or looking like JSON but invalid, cut, or compressed beyond decoding)
  is not written (``_omitted``) when redaction patterns are configured.
- Custom fields (HAR allows names starting with ``_``): ``_id`` (the request id),
  ``_endpoint``, and ``request._target``: the request target as the client sent it (redacted
  as ``url`` is). Replay sends that, not the path parsed back from ``url``: the URL is built
  from the Host header, which a client may send malformed (``svc.example#frag``), and
  parsing loses an empty query (``/trail?``). In ``url`` such a Host is percent-encoded.
"""

from __future__ import annotations

import base64
import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import orjson

from shadowproxy import __version__
from shadowproxy.compare import decode, media
from shadowproxy.compare.headers import list_value
from shadowproxy.compare.json_parse import NotJson, parse_json
from shadowproxy.compare.pointer import escape
from shadowproxy.exchange import Headers, Response, first_header
from shadowproxy.headers import REDACTED
from shadowproxy.logsafe import secret_header
from shadowproxy.record import URL_HEADERS, QueryRedactor
from shadowproxy.redact import Redactor
from shadowproxy.report.read import STDIN, expand_sources, iter_lines, open_source

HAR_VERSION = "1.2"
CREATOR = {"name": "shadowproxy", "version": __version__}
DECODE_EXPANSION = 4
"""A compressed body is decoded up to this many times ``capture.max_body_bytes``."""
BASE64 = "base64"
MIN_WEIGHT = 512
"""What a captured exchange counts for at least, against ``capture.max_buffer_bytes``."""

_DOCUMENT_START = re.compile(rb"\s*\{\s*(\"log\"\s*:.*)?")


# --- building entries -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Captured:
    """One exchange of the primary path as the proxy saw it: raw, not yet redacted."""

    id: str
    endpoint: str
    started_at: float
    """Epoch seconds the request arrived."""
    method: str
    scheme: str
    raw_path: str
    http_version: str
    request_headers: Headers
    request_body: bytes
    request_size: int
    """Bytes of request body seen in all; more than ``len(request_body)`` when cut."""
    status: int
    reason: str
    response_headers: Headers
    response_body: bytes
    response_size: int
    latency_ms: float

    def weight(self) -> int:
        """Roughly the memory this holds, for the capture's buffer bound."""
        headers = sum(len(n) + len(v) for n, v in self.request_headers)
        headers += sum(len(n) + len(v) for n, v in self.response_headers)
        return len(self.request_body) + len(self.response_body) + headers + MIN_WEIGHT


def iso_time(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


_AUTHORITY_SAFE = "-._~!$&'()*+,;=:[]"
"""What a Host may hold in a URL's authority (RFC 3986): the rest (``/ ? # @ %``, spaces) is
percent-encoded, so a malformed Host cannot end the authority early or add a path."""


ASTERISK = "*"
"""The asterisk-form target of ``OPTIONS *`` (RFC 9112, 3.2.4)."""


def _url(scheme: str, host: str, target: str) -> str:
    """The entry's ``url``: a Host that does not belong in an authority cannot change where the
    path starts, nor what it is."""
    authority = f"{scheme}://{quote(host, safe=_AUTHORITY_SAFE)}"
    return f"{authority}/" if target == ASTERISK else f"{authority}{target}"


def _har_value(name: str, value: str, query: QueryRedactor | None) -> str:
    if secret_header(name):
        return REDACTED
    if query is not None and name.lower() in URL_HEADERS:
        return query(value)
    return value


def _har_headers(headers: Headers, query: QueryRedactor | None) -> list[dict[str, str]]:
    return [{"name": n, "value": _har_value(n, v, query)} for n, v in headers]


def _is_text(body: bytes) -> bool:
    return media.is_text(body)


@dataclass(slots=True)
class _Body:
    """A body made ready to write: its bytes, or why it is left out, and what was redacted."""

    data: bytes | None
    redacted: list[str] = field(default_factory=list)
    omitted: str | None = None


def _dump_json(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer beyond 64 bits, or a lone surrogate from a \ud800 escape
        import json

        # ASCII output keeps both exact: the integer's digits, the surrogate as its escape.
        return json.dumps(value, separators=(",", ":")).encode("ascii")


def redact_body(body: bytes, content_type: str | None, redactor: Redactor) -> _Body:
    """The body with ``log.redact`` places replaced; ``omitted`` when it might hold such a
    place but cannot be inspected.

    Multipart bodies carry fields this cannot reach, and are left out. A body without a
    Content-Type is read as JSON when it looks like JSON, else as a form when it is text
    (``a=1&password=x``; text without fields comes out as it was)."""
    if not redactor or not body:
        return _Body(body)
    if media.media_type(content_type).startswith("multipart/"):
        return _Body(None, omitted="multipart bodies are not redacted")
    declared = media.declared_kind(content_type)
    as_form = declared is None and not media.looks_like_json(body) and _is_text(body)
    if declared is media.BodyKind.FORM or as_form:
        pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        found: list[str] = []
        out = []
        for key, value in pairs:
            pointer = "/" + escape(key)
            if redactor.value(pointer, value) is REDACTED:
                found.append(pointer)
                value = REDACTED
            out.append((key, value))
        return _Body(urlencode(out).encode() if found else body, found)
    maybe_json = declared is media.BodyKind.JSON or (
        declared in (None, media.BodyKind.TEXT) and media.looks_like_json(body)
    )
    if not maybe_json:
        return _Body(body)
    try:
        document = parse_json(body)
    except NotJson:
        if declared is media.BodyKind.JSON:
            return _Body(None, omitted="declared JSON but not valid JSON, so it cannot be redacted")
        return _Body(
            None, omitted="looks like JSON but is not valid JSON, so it cannot be redacted"
        )
    try:
        redacted, found = redactor.document(document)
    except RecursionError:
        return _Body(None, omitted="JSON too deep to redact")
    return _Body(_dump_json(redacted) if found else body, found)


def _text_fields(data: bytes, encoding_key: str) -> dict[str, Any]:
    if _is_text(data):
        return {"text": data.decode("utf-8")}
    fields: dict[str, Any] = {"text": base64.b64encode(data).decode("ascii"), encoding_key: BASE64}
    return fields


def _post_data(c: Captured, redactor: Redactor) -> dict[str, Any]:
    content_type = first_header(c.request_headers, "content-type")
    post: dict[str, Any] = {"mimeType": content_type or ""}
    if c.request_size > len(c.request_body):
        post["_truncated"] = True
        post["comment"] = f"body of {c.request_size} bytes exceeds capture.max_body_bytes"
        return post
    if redactor and decode.codings(list_value(c.request_headers, "content-encoding")):
        post["_omitted"] = "content-encoded request bodies are not redacted"
        post["comment"] = "body not written: " + post["_omitted"]
        return post
    body = redact_body(c.request_body, content_type, redactor)
    if body.data is None:
        post["_omitted"] = body.omitted
        post["comment"] = f"body not written: {body.omitted}"
        return post
    post.update(_text_fields(body.data, "_encoding"))
    if "_encoding" in post:
        post["comment"] = "text is base64: the body is not UTF-8 text"
    if body.redacted:
        post["_redacted"] = body.redacted
    return post


def _content(c: Captured, redactor: Redactor, max_decoded: int) -> dict[str, Any]:
    content_type = first_header(c.response_headers, "content-type")
    content: dict[str, Any] = {"size": c.response_size, "mimeType": content_type or ""}
    if not c.response_size:
        content["text"] = ""
        return content
    codings = decode.codings(list_value(c.response_headers, "content-encoding"))
    truncated = c.response_size > len(c.response_body)
    decoded: bytes | None = None
    why_raw = ""
    if truncated:
        content["_truncated"] = True
        why_raw = f"only the first {len(c.response_body)} of {c.response_size} bytes were kept"
    elif codings:
        try:
            decoded = decode.decode(c.response_body, codings, max_decoded)
        except decode.DecodeError as error:
            why_raw = f"the body could not be decoded ({error})"
    else:
        decoded = c.response_body
    if decoded is None:
        # As received: a prefix, or still encoded. Redaction cannot look inside; when it must,
        # the body is not written. Known text or binary types hold no JSON places.
        kind = media.declared_kind(content_type)
        inspectable = kind is media.BodyKind.BINARY or (
            kind is media.BodyKind.TEXT
            and not codings
            and not media.looks_like_json(c.response_body)
        )
        if redactor and not inspectable:
            content["_omitted"] = f"{why_raw}, so it cannot be redacted"
            content["comment"] = "body not written: " + content["_omitted"]
            return content
        content["_raw"] = True
        content["text"] = base64.b64encode(c.response_body).decode("ascii")
        content["encoding"] = BASE64
        content["comment"] = f"text is the body as received: {why_raw}"
        return content
    body = redact_body(decoded, content_type, redactor)
    if body.data is None:
        content["size"] = len(decoded)
        content["_omitted"] = body.omitted
        content["comment"] = f"body not written: {body.omitted}"
        return content
    content["size"] = len(decoded)
    if codings and c.response_size <= len(decoded):
        content["compression"] = len(decoded) - c.response_size
    content.update(_text_fields(body.data, "encoding"))
    if body.redacted:
        content["_redacted"] = body.redacted
    return content


def build_entry(
    c: Captured,
    redactor: Redactor,
    max_body_bytes: int,
    query_redactor: QueryRedactor | None = None,
) -> dict[str, Any]:
    """The HAR entry of one captured exchange, redacted: secret headers, ``log.redact`` body
    places, and (with ``query_redactor``) ``log.redact_query`` values in the URL."""
    host = first_header(c.request_headers, "host") or "localhost"
    raw_path = query_redactor(c.raw_path) if query_redactor is not None else c.raw_path
    query = raw_path.partition("?")[2]
    location = first_header(c.response_headers, "location")
    request: dict[str, Any] = {
        "method": c.method,
        "url": _url(c.scheme, host, raw_path),
        "httpVersion": c.http_version,
        "cookies": [],
        "headers": _har_headers(c.request_headers, query_redactor),
        "queryString": [
            {"name": n, "value": v} for n, v in parse_qsl(query, keep_blank_values=True)
        ],
        "headersSize": -1,
        "bodySize": c.request_size,
    }
    if raw_path.startswith("/") or (raw_path == ASTERISK and c.method == "OPTIONS"):
        request["_target"] = raw_path  # origin-form, or OPTIONS *; replay sends no other
    if c.request_size or c.request_body:
        request["postData"] = _post_data(c, redactor)
    response = {
        "status": c.status,
        "statusText": c.reason,
        "httpVersion": c.http_version,
        "cookies": [],
        "headers": _har_headers(c.response_headers, query_redactor),
        "content": _content(c, redactor, max_body_bytes * DECODE_EXPANSION),
        "redirectURL": _har_value("location", location, query_redactor) if location else "",
        "headersSize": -1,
        "bodySize": c.response_size,
    }
    latency = round(c.latency_ms, 3)
    return {
        "startedDateTime": iso_time(c.started_at),
        "time": latency,
        "request": request,
        "response": response,
        "cache": {},
        "timings": {"send": 0, "wait": latency, "receive": 0},
        "_id": c.id,
        "_endpoint": c.endpoint,
    }


# --- reading entries back -------------------------------------------------------------------


class InvalidEntry(ValueError):
    """A JSON object that is not a usable HAR entry; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Recorded:
    """A captured exchange as replay needs it."""

    id: str | None
    method: str
    url: str
    path: str
    """The raw path with its query, percent-encoding as recorded."""
    headers: Headers
    """As recorded: redacted values included, HTTP/2 pseudo-headers left out."""
    body: bytes | None
    """None when the body was not captured in full; see ``request_problem``."""
    started_at: float | None
    response: Response | None
    """The recorded answer; None when there is none to compare with (``response_problem``)."""
    redacted: frozenset[str] = frozenset()
    """Body places of the response replaced by redaction: not compared on replay."""
    request_problem: str | None = None
    response_problem: str | None = None


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidEntry(f"{where}: must be a string")
    return value


def _dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidEntry(f"{where}: must be an object")
    return value


def _headers(value: Any, where: str) -> Headers:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidEntry(f"{where}: must be a list")
    pairs = []
    for item in value:
        if not isinstance(item, dict):
            raise InvalidEntry(f"{where}: each header must be an object")
        name, header = item.get("name"), item.get("value")
        if not isinstance(name, str) or not isinstance(header, str):
            raise InvalidEntry(f"{where}: each header needs a string name and value")
        if name.startswith(":"):  # HTTP/2 pseudo-headers, as browsers record them
            continue
        pairs.append((name, header))
    return tuple(pairs)


def _decode_text(holder: dict[str, Any], encoded: bool, where: str) -> bytes:
    text = holder.get("text")
    if not isinstance(text, str):
        raise InvalidEntry(f"{where}.text: must be a string")
    if encoded:
        try:
            # Some tools wrap base64 at 76 characters: the line breaks are not data.
            return base64.b64decode("".join(text.split()), validate=True)
        except ValueError:
            raise InvalidEntry(f"{where}.text: invalid base64") from None
    return text.encode("utf-8", "surrogatepass")


def _started(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _path_of(url: str) -> str:
    """The path and query of ``url`` as written there: an empty query (``/trail?``) stays."""
    if url.startswith("/"):
        return url.split("#", 1)[0]
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        raise InvalidEntry("request.url: must be an absolute URL or a path")
    rest = url[url.index("//") + 2 + len(parts.netloc) :].split("#", 1)[0]
    return rest if rest.startswith("/") else "/" + rest


def _target_of(request: dict[str, Any], url: str) -> str:
    """What replay sends: the recorded request target, else the path of ``url``."""
    target = request.get("_target")
    if target is None:
        return _path_of(url)
    if target == ASTERISK and request.get("method") == "OPTIONS":
        return ASTERISK
    if not isinstance(target, str) or not target.startswith("/"):
        raise InvalidEntry("request._target: must be a path starting with / (or * for OPTIONS)")
    return target


def _request_body(request: dict[str, Any]) -> tuple[bytes | None, str | None]:
    post = request.get("postData")
    if post is None:
        return b"", None
    post = _dict(post, "request.postData")
    if post.get("_truncated"):
        return None, "request body not captured in full"
    if post.get("_omitted"):
        return None, f"request body not captured ({post['_omitted']})"
    if "text" not in post:
        params = post.get("params")
        if isinstance(params, list) and params:
            pairs = [
                (str(p.get("name", "")), str(p.get("value", "")))
                for p in params
                if isinstance(p, dict)
            ]
            return urlencode(pairs).encode(), None
        return b"", None
    encoded = post.get("_encoding") == BASE64 or post.get("encoding") == BASE64
    return _decode_text(post, encoded, "request.postData"), None


def _response(
    response: dict[str, Any], time_ms: float
) -> tuple[Response | None, frozenset[str], str | None]:
    status = response.get("status")
    if not isinstance(status, int) or isinstance(status, bool):
        raise InvalidEntry("response.status: must be a number")
    if status <= 0:
        return None, frozenset(), "no response recorded (status 0)"
    headers = _headers(response.get("headers"), "response.headers")
    content = _dict(response.get("content", {}), "response.content")
    size = content.get("size")
    size = size if isinstance(size, int) and size >= 0 else 0
    if content.get("_omitted"):
        return None, frozenset(), f"response body not captured ({content['_omitted']})"
    redacted = content.get("_redacted") or []
    if "text" not in content:
        if size:
            return None, frozenset(), "response body not recorded"
        body = b""
    else:
        body = _decode_text(content, content.get("encoding") == BASE64, "response.content")
    truncated = bool(content.get("_truncated"))
    if not content.get("_raw"):
        # HAR text is the decoded body; the Content-Encoding header no longer describes it.
        headers = tuple((n, v) for n, v in headers if n.lower() != "content-encoding")
        size = len(body)
    elif truncated:
        body_size = response.get("bodySize")
        size = body_size if isinstance(body_size, int) and body_size > len(body) else size
    else:
        size = len(body)
    return (
        Response(
            status=status,
            headers=headers,
            body=body,
            size=max(size, len(body)),
            latency_ms=time_ms,
            truncated=truncated,
        ),
        frozenset(str(p) for p in redacted),
        None,
    )


def parse_entry(entry: Any) -> Recorded:
    """A HAR entry (from a capture or a browser's HAR file) made ready for replay."""
    entry = _dict(entry, "entry")
    request = _dict(entry.get("request"), "request")
    method = _str(request.get("method"), "request.method").upper()
    url = _str(request.get("url"), "request.url")
    headers = _headers(request.get("headers"), "request.headers")
    body, request_problem = _request_body(request)
    time_ms = entry.get("time")
    time_ms = float(time_ms) if isinstance(time_ms, int | float) and time_ms >= 0 else 0.0
    response, redacted, response_problem = _response(
        _dict(entry.get("response"), "response"), time_ms
    )
    recorded_id = entry.get("_id")
    return Recorded(
        id=recorded_id if isinstance(recorded_id, str) and recorded_id else None,
        method=method,
        url=url,
        path=_target_of(request, url),
        headers=headers,
        body=body,
        started_at=_started(entry.get("startedDateTime")),
        response=response,
        redacted=redacted,
        request_problem=request_problem,
        response_problem=response_problem,
    )


@dataclass
class ReadCounts:
    """What reading captures saw besides entries: lines that are not JSON objects (corrupt),
    objects that are not usable entries (invalid); the first of each, for the warning."""

    entries: int = 0
    corrupt: int = 0
    first_corrupt: str | None = None
    invalid: int = 0
    first_invalid: str | None = None

    def bad(self, where: str, reason: str, *, corrupt: bool) -> None:
        if corrupt:
            self.corrupt += 1
            if self.first_corrupt is None:
                self.first_corrupt = where
        else:
            self.invalid += 1
            if self.first_invalid is None:
                self.first_invalid = f"{where}: {reason}"

    def warnings(self) -> list[str]:
        out = []
        if self.corrupt:
            out.append(
                f"skipped {self.corrupt:,} corrupt line(s) that are not JSON objects "
                f"(first: {self.first_corrupt})"
            )
        if self.invalid:
            out.append(
                f"skipped {self.invalid:,} entr(y/ies) that are not usable HAR entries "
                f"(first: {self.first_invalid})"
            )
        return out


@dataclass(frozen=True, slots=True)
class Item:
    """One raw entry and where it came from."""

    source: str
    line: int
    """The line number in a JSON-lines capture; the entry's index in a HAR document."""
    entry: dict[str, Any]


def _document_entries(data: bytes, label: str) -> list[Any]:
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise CaptureInputError(f"{label}: not a HAR document ({error})") from None
    log = document.get("log") if isinstance(document, dict) else None
    entries = log.get("entries") if isinstance(log, dict) else None
    if not isinstance(entries, list):
        raise CaptureInputError(f"{label}: not a HAR document (no log.entries list)")
    return entries


class CaptureInputError(Exception):
    """A capture that cannot be read; the message names it and is meant for the operator."""


_BOM = b"\xef\xbb\xbf"


def _first_line(lines: Iterator[tuple[int, bytes]]) -> tuple[int, bytes] | None:
    """The first line that is not blank, without the byte order mark some tools write."""
    for number, line in lines:
        line = line.removeprefix(_BOM)
        if line.strip():
            return number, line
    return None


def _is_document(first: bytes) -> bool:
    """A HAR document starts with ``{`` alone on its line, or with ``{"log":``; a line of a
    JSON-lines capture is a whole entry."""
    return _DOCUMENT_START.fullmatch(first.rstrip()) is not None


def _iter_source(name: str, counts: ReadCounts) -> Iterator[Item]:
    label = "stdin" if name == STDIN else name
    with open_source(name) as stream:
        lines = enumerate(iter_lines(stream), 1)
        head = _first_line(lines)
        if head is None:
            return
        first = head[1]
        if _is_document(first):
            # A whole HAR document (pretty-printed or on one line) is read at once: documents
            # come from browsers and are small; captures are JSON lines and stream.
            data = b"\n".join([first, *(line for _, line in lines)])
            for index, entry in enumerate(_document_entries(data, label)):
                if isinstance(entry, dict):
                    counts.entries += 1
                    yield Item(label, index, entry)
                else:
                    counts.bad(f"{label}, entry {index}", "not an object", corrupt=False)
            return
        loads, decode_error = orjson.loads, orjson.JSONDecodeError
        for number, line in itertools.chain([head], lines):
            try:
                entry = loads(line)
            except decode_error:
                if not line.strip():
                    continue
                entry = None
            if type(entry) is dict:
                counts.entries += 1
                yield Item(label, number, entry)
            else:
                counts.bad(f"{label}, line {number}", "not a JSON object", corrupt=True)


def _count_source(name: str) -> int:
    with open_source(name) as stream:
        lines = enumerate(iter_lines(stream), 1)
        head = _first_line(lines)
        if head is None:
            return 0
        if _is_document(head[1]):
            data = b"\n".join([head[1], *(line for _, line in lines)])
            return len(_document_entries(data, name))
        return 1 + sum(1 for _, line in lines if line.strip())


def read_entries(names: Sequence[str], counts: ReadCounts | None = None) -> Iterator[Item]:
    """Every entry of every named capture, streamed: JSON-lines captures (plain, .gz, .zst,
    stdin) and HAR documents. Bad lines are counted in ``counts`` and skipped; a capture that
    cannot be read raises CaptureInputError."""
    from shadowproxy.report.read import ReportInputError

    counts = counts if counts is not None else ReadCounts()
    try:
        sources = expand_sources(names)
    except ReportInputError as error:
        raise CaptureInputError(str(error)) from None
    for name in sources:
        try:
            yield from _iter_source(name, counts)
        except (CaptureInputError, GeneratorExit):
            raise
        except ReportInputError as error:
            raise CaptureInputError(str(error)) from None
        except (OSError, EOFError, ValueError) as error:
            label = "stdin" if name == STDIN else name
            raise CaptureInputError(f"{label}: cannot read: {error}") from None


def count_entries(names: Sequence[str]) -> int | None:
    """How many entries the captures hold (non-blank lines, for JSON lines), by a pass that
    does not parse them; None when one of them is stdin, which can be read only once."""
    from shadowproxy.report.read import ReportInputError

    if STDIN in names:
        return None
    try:
        return sum(_count_source(name) for name in expand_sources(names))
    except (ReportInputError, CaptureInputError, OSError, EOFError, ValueError):
        return None


# --- exporting a document -------------------------------------------------------------------


def looks_like_entry(entry: dict[str, Any]) -> bool:
    return isinstance(entry.get("request"), dict) and isinstance(entry.get("response"), dict)


def export(names: Sequence[str], out: IO[bytes], counts: ReadCounts | None = None) -> int:
    """Write one HAR 1.2 document of every entry of the named captures; the entries stream
    through, so memory does not grow with the capture. Returns the number of entries."""
    counts = counts if counts is not None else ReadCounts()
    head = {"version": HAR_VERSION, "creator": CREATOR}
    opening = orjson.dumps({"log": head})[:-2]  # without the closing "}}"
    out.write(opening + b',"entries":[\n')
    written = 0
    for item in read_entries(names, counts):
        if not looks_like_entry(item.entry):
            counts.bad(f"{item.source}, line {item.line}", "no request or response", corrupt=False)
            continue
        out.write((b",\n" if written else b"") + orjson.dumps(item.entry))
        written += 1
    out.write(b"\n]}}\n")
    return written
