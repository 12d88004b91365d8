"""The one config model: every option, its default and its bounds are declared here.

`load_config` reads YAML with `safe_load`, validates it and raises `ConfigError` with messages
that name the offending key (``mirror.sample_rate: must be between 0 and 1``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Annotated, Any

import orjson
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from yarl import URL

from shadowproxy.endpoints import EndpointPattern
from shadowproxy.logsafe import secret_header

ENV_CONFIG = "SHADOWPROXY_CONFIG"
ENV_ADMIN_TOKEN = "SHADOWPROXY_ADMIN_TOKEN"

KIB = 1024
MIB = 1024 * KIB
# The largest integer any setting may hold (a signed 64-bit one).
MAX_NUMBER = 2**63 - 1

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE", "TRACE", "CONNECT"}
)

# Headers that differ between any two healthy responses, or that only describe the encoding of
# a body that is compared decoded.
DEFAULT_IGNORE_HEADERS = (
    "date",
    "server",
    "x-request-id",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "etag",
    "last-modified",
    "expires",
    "age",
    "vary",
    "set-cookie",
    "x-shadow-request",
)

# Query parameters whose values never reach the log: credentials that clients put in URLs.
DEFAULT_REDACT_QUERY = (
    "access_token",
    "api_key",
    "apikey",
    "auth",
    "client_secret",
    "code",
    "id_token",
    "key",
    "password",
    "refresh_token",
    "secret",
    "sig",
    "signature",
    "token",
    "x-amz-credential",
    "x-amz-security-token",
    "x-amz-signature",
)

RESTART_ONLY_KEYS = (
    "listen", "admin", "primary", "candidate", "secondary", "capture", "listen_tls",
    "shutdown_timeout", "reload",
)  # fmt: skip
"""Keys a reload does not change (nor do ``log.path`` and ``noise.state_path``): sockets,
backends' connection pools, the capture file, the noise counts' file and the watcher are set
up once, at start."""


def without_credentials(url: str) -> str:
    """``url`` with its user information replaced, for logs and the admin listener."""
    # Up to the last "@" before the path: a password may hold a raw "@" of its own.
    return re.sub(r"//[^/?#]*@", "//[redacted]@", url, count=1)


class ConfigError(Exception):
    """A config that cannot be used; the message is meant for the operator, as is."""


# --- reusable field types -------------------------------------------------------------------


def _between(low: float, high: float) -> Callable[[float], float]:
    def check(value: float) -> float:
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}")
        return value

    return check


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _parse_host_port(value: Any) -> Any:
    if not isinstance(value, str):
        if isinstance(value, dict | HostPort):
            return value
        raise ValueError('must be "host:port", such as "127.0.0.1:8080"')
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError('must be "host:port" with a port from 0 to 65535')
    host = host.strip("[]")
    if not host:
        # ":9901" would bind every interface: for the admin listener that is never a default.
        raise ValueError('must name the host: "0.0.0.0:PORT" for every interface')
    return HostPort(host=host, port=int(port))


def _parse_size(value: Any) -> Any:
    """Accept 1048576, "1MiB", "512 KiB", "10MB"."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]i?[bB]?|[bB])?\s*", value)
        if not match:
            raise ValueError('must be a number of bytes such as 1048576 or "1MiB"')
        number, unit = float(match.group(1)), (match.group(2) or "b").lower().rstrip("b")
        factors = {"": 1, "k": 1000, "ki": KIB, "m": 1000**2, "mi": MIB, "g": 1000**3, "gi": KIB**3}
        size = number * factors[unit]
        if not size <= MAX_NUMBER:  # inf (a number of 400 digits) included
            raise ValueError("is too large")
        return int(size)
    return value


def _methods(value: list[str]) -> list[str]:
    upper = [m.upper() for m in value]
    unknown = sorted(set(upper) - KNOWN_METHODS)
    if unknown:
        raise ValueError(f"unknown HTTP method(s): {', '.join(unknown)}")
    return upper


def _lower_all(value: list[str]) -> list[str]:
    return [v.lower() for v in value]


Fraction = Annotated[float, AfterValidator(_between(0, 1))]
Seconds = Annotated[float, AfterValidator(_positive)]
Bytes = Annotated[int, BeforeValidator(_parse_size), Field(ge=0)]
Count = Annotated[int, Field(ge=1)]
Methods = Annotated[list[str], AfterValidator(_methods)]
HeaderNames = Annotated[list[str], AfterValidator(_lower_all)]


class Model(BaseModel):
    # NaN and infinity are never meaningful here (a NaN timeout passes every comparison).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class HostPort(Model):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        """Only this machine can reach it: a loopback address, or ``localhost`` (a name like
        ``127.corp.example`` is not one, whatever it starts with)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


Address = Annotated[HostPort, BeforeValidator(_parse_host_port)]


# --- backends -------------------------------------------------------------------------------


class UpstreamTLS(Model):
    """How an https:// backend is verified, and the certificate we show it."""

    ca_file: str | None = None
    """CA bundle to verify the backend with; the system's store by default."""
    cert_file: str | None = None
    """Client certificate for mutual TLS (with ``key_file``)."""
    key_file: str | None = None
    server_name: str | None = None
    """SNI and the name the certificate must carry; by default ``host``, else the URL's host."""
    insecure: bool = False
    """Skip certificate verification. Only for tests; logged loudly at every start."""

    @model_validator(mode="after")
    def _pair(self) -> UpstreamTLS:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class Backend(Model):
    """One upstream: the primary, the candidate or the secondary."""

    url: str
    """``http://host:port[/prefix]``, ``https://...``, or ``unix:///path/to.sock[:/prefix]``."""
    timeout: Seconds = 30.0
    connect_timeout: Seconds = 5.0
    host: str | None = None
    """Host header sent to this backend; by default the client's Host is forwarded."""
    max_connections: Count = 100
    keepalive_timeout: Seconds = 15.0
    """Idle pooled connections close after this long; keep it below the backend's own."""
    tls: UpstreamTLS = Field(default_factory=UpstreamTLS)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value.startswith("unix://"):
            if not value.removeprefix("unix://").startswith("/"):
                raise ValueError(
                    "a unix:// URL needs an absolute socket path: unix:///run/app.sock"
                )
            return value
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http://, https:// or unix:// URL")
        if any(c.isspace() for c in value) or "?" in value or "#" in value:
            # A request's own query is sent; one here would be lost or doubled.
            raise ValueError("must not hold spaces, a query (?) or a fragment (#)")
        try:
            port = URL(value).port
        except ValueError as error:
            reason = str(error).removeprefix("Invalid URL: ")
            raise ValueError(f"not a valid URL: {reason}") from None
        if not port:
            raise ValueError("port must be between 1 and 65535")
        return value.rstrip("/")

    @property
    def unix_socket(self) -> str | None:
        """The socket path of a ``unix://`` backend."""
        if not self.url.startswith("unix://"):
            return None
        return self.url.removeprefix("unix://").split(":", 1)[0]

    @property
    def base_url(self) -> str:
        """What request paths are appended to."""
        if self.unix_socket is None:
            return self.url
        _, _, prefix = self.url.removeprefix("unix://").partition(":")
        return "http://localhost" + prefix.rstrip("/")


class CandidateBackend(Backend):
    timeout: Seconds = 5.0


# --- mirroring ------------------------------------------------------------------------------


STICKY_KEY_FORMS = '"header:NAME", "cookie:NAME", "query:NAME" or "client_ip"'
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""RFC 9110 token: the characters of a header or cookie name."""


def _sticky_key(value: str) -> str:
    text = value.strip()
    kind, sep, name = text.partition(":")
    if text == "client_ip":
        return text
    if not sep or kind not in ("header", "cookie", "query") or not name.strip():
        raise ValueError(f"must be {STICKY_KEY_FORMS}, not {value!r}")
    name = name.strip()
    if kind != "query" and not _TOKEN.fullmatch(name):
        raise ValueError(f'"{name}" is not a valid {kind} name')
    return f"{kind}:{name}"


class BreakerConfig(Model):
    """Pauses mirroring after a run of candidate errors, so a candidate that is down is left
    alone instead of being sent every sampled request."""

    failures: Count = 5
    """Consecutive candidate errors that open the breaker: no usable answer (refused, reset,
    timeout, invalid HTTP) or a 502, 503 or 504."""
    pause: Seconds = 30.0
    """Seconds mirroring stays paused. Then one probe request is mirrored: success closes the
    breaker, failure pauses again."""


class MirrorConfig(Model):
    sample_rate: Fraction = 1.0
    methods: Methods = Field(default_factory=lambda: list(SAFE_METHODS))
    """Unsafe methods are mirrored only when listed here explicitly (or per route, by a rule
    with ``allow_unsafe``)."""
    max_in_flight: Count = 100
    max_body_bytes: Bytes = 8 * MIB
    """Requests with larger bodies are proxied but not mirrored."""
    shutdown_grace: Annotated[float, Field(ge=0)] = 2.0
    """Seconds pending mirrors may still finish after the listener closes."""
    rules: list[MirrorRule] = Field(default_factory=list)
    """Per-route overrides, in order: the first rule whose ``match`` and ``when`` fit a request
    decides for it; requests no rule fits follow the settings above."""
    sticky_key: Annotated[str, AfterValidator(_sticky_key)] | None = None
    """Makes sampling stable per client: ``header:NAME``, ``cookie:NAME``, ``query:NAME`` or
    ``client_ip`` (the TCP peer's address). A request is mirrored when a hash of the key's value
    falls below the rate, so the same client is always in or out, in every worker and after
    restarts, and raising the rate keeps everyone who was in. Requests without the key (or with
    an empty value) are sampled at random at the same rate. Unset: every request is sampled at
    random."""
    max_rps: Annotated[float, AfterValidator(_positive)] | None = None
    """Mirrors sent to the candidate per second at most, with bursts of up to one second's
    worth; over it, requests are not mirrored (counted as ``rate_limit``). Worker processes
    share it by what each is asked for, looked at every half second: one worker holding most
    of the connections gets most of the rate. Unset: no limit."""
    breaker: BreakerConfig | None = None
    """The candidate's circuit breaker; unset: mirroring never pauses on candidate errors."""

    @model_validator(mode="after")
    def _rules_can_mirror(self) -> MirrorConfig:
        allowed = set(self.methods)
        for index, rule in enumerate(self.rules):
            if not rule.mirror or rule.allow_unsafe:
                continue
            methods = EndpointPattern.parse(rule.match).methods
            if methods is not None and not methods & allowed:
                names = ", ".join(sorted(methods))
                raise ValueError(
                    f"mirror.rules[{index}].match: {names} is not in mirror.methods, so this "
                    "rule would never mirror; set allow_unsafe: true on the rule to mirror it "
                    "on this route"
                )
        return self


# --- comparison -----------------------------------------------------------------------------


def _tolerance(value: Any) -> Any:
    """Relative tolerances are written as percentages ("0.1%"), absolute ones as numbers."""
    if isinstance(value, str) and value.strip().endswith("%"):
        return {"relative": float(value.strip()[:-1]) / 100}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"absolute": float(value)}
    if isinstance(value, str):
        # YAML 1.1 reads an exponent without a dot (``1e-9``) as a string.
        try:
            return {"absolute": float(value)}
        except ValueError:
            pass
    return value


class Tolerance(Model):
    absolute: Annotated[float, Field(ge=0)] = 0.0
    relative: Annotated[float, Field(ge=0)] = 0.0

    @field_validator("relative", mode="before")
    @classmethod
    def _percent(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().endswith("%"):
            return float(value.strip()[:-1]) / 100
        return value


def _unordered(value: Any) -> Any:
    return {"path": value} if isinstance(value, str) else value


def _pointer_pattern(value: str) -> str:
    if value != "" and not value.startswith("/"):
        raise ValueError(f'JSON Pointer pattern "{value}" must start with "/"')
    if re.search("~(?![01])", value):
        raise ValueError(f'JSON Pointer pattern "{value}": "~" must be written "~0" ("/" is "~1")')
    return value


PointerPattern = Annotated[str, AfterValidator(_pointer_pattern)]


def _endpoint_pattern(value: str) -> str:
    pattern = EndpointPattern.parse(value)
    unknown = sorted((pattern.methods or frozenset()) - KNOWN_METHODS)
    if unknown:
        raise ValueError(f"unknown HTTP method(s): {', '.join(unknown)}")
    return pattern.source


EndpointMatch = Annotated[str, AfterValidator(_endpoint_pattern)]
"""An endpoint template (``GET /users/{id}``, method optional) or a glob (``/api/*``)."""


class Unordered(Model):
    path: PointerPattern
    key: str | None = None
    """Match array elements by this member (``/items`` by ``id``) instead of by position."""


class DiffRules(Model):
    """Rules that apply globally, and again per endpoint where an endpoint overrides them."""

    ignore: list[PointerPattern] = Field(default_factory=list)
    """JSON Pointer patterns: ``*`` matches one key or index, ``**`` any depth."""
    unordered: list[Annotated[Unordered, BeforeValidator(_unordered)]] = Field(default_factory=list)
    tolerance: Annotated[Tolerance, BeforeValidator(_tolerance)] | None = None
    ignore_headers: HeaderNames = Field(default_factory=list)
    null_equals_missing: bool | None = None


def _literal_id_warning(key: str, match: str) -> str | None:
    """Why ``match`` cannot apply to comparisons, which see endpoints with ids folded; a
    warning, not an error: which segments look like ids is a heuristic, never a reason to
    refuse a config."""
    ids = EndpointPattern.parse(match).literal_ids()
    if not ids:
        return None
    return (
        f'{key}: "{ids[0]}" looks like an id, and comparisons see endpoints with ids folded '
        f"(GET /users/{{id}}): this match may never apply"
    )


class EndpointDiffRules(DiffRules):
    match: EndpointMatch
    """An endpoint template (``GET /users/{id}``, method optional) or a glob (``/api/*``),
    matched against endpoints, whose ids are folded."""


class DiffConfig(Model):
    ignore_headers: HeaderNames = Field(default_factory=lambda: list(DEFAULT_IGNORE_HEADERS))
    compare_headers: bool = True
    ignore: list[PointerPattern] = Field(default_factory=list)
    unordered: list[Annotated[Unordered, BeforeValidator(_unordered)]] = Field(default_factory=list)
    tolerance: Annotated[Tolerance, BeforeValidator(_tolerance)] | None = None
    null_equals_missing: bool = False
    endpoints: list[EndpointDiffRules] = Field(default_factory=list)
    max_differences: Count = 50
    max_body_bytes: Bytes = 10 * MIB
    """Bodies are captured for comparison up to this size; beyond it only sizes are compared."""
    workers: Annotated[int, Field(ge=0)] = 1
    """Processes for detailed diffs; 0 runs them on a thread beside the event loop."""
    max_queue: Count = 256
    """Comparisons waiting for a worker; when full, new ones are skipped and counted."""


# --- mirror rules ---------------------------------------------------------------------------

# Headers a rule may not change on the candidate's copy: they frame the message or belong to
# one connection (changing them would corrupt the request), or mark it as dark traffic.
PROTECTED_HEADERS = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "x-shadow-request",
    }
)


def _header_name(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f'"{value}" is not a valid header name')
    return value


def _text(value: Any) -> Any:
    """YAML reads ``version: 2`` as a number; a header or query value is text."""
    if isinstance(value, bool):
        raise ValueError("must be text: quote true, false, yes, no, on and off in YAML")
    if isinstance(value, int | float):
        return str(value)
    return value


def _single_line(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError("must not contain line breaks or NUL")
    return value


def _one_or_many(value: Any) -> Any:
    return value if isinstance(value, list | tuple) else [value]


def _not_empty(value: list[str]) -> list[str]:
    if not value:
        raise ValueError("must name at least one accepted value")
    return value


def _query_name(value: str) -> str:
    if not value:
        raise ValueError("a query parameter name must not be empty")
    return value


def _path_prefix(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f'path prefix "{value}" must start with "/"')
    if any(c in value for c in "?# \t\r\n"):
        raise ValueError(f'path prefix "{value}" must be a path only (no query, no spaces)')
    return value


HeaderName = Annotated[str, AfterValidator(_header_name)]
Text = Annotated[str, BeforeValidator(_text), AfterValidator(_single_line)]
Accepted = Annotated[list[Text], BeforeValidator(_one_or_many), AfterValidator(_not_empty)]
QueryName = Annotated[str, AfterValidator(_query_name)]
PathPrefix = Annotated[str, AfterValidator(_path_prefix)]


class RuleConditions(Model):
    """Further conditions of a rule, all of which must hold. Each names a value or a list of
    accepted values, compared exactly (header names are case-insensitive, values are not)."""

    header: dict[HeaderName, Accepted] = Field(default_factory=dict)
    """Request header → accepted values; a header sent several times matches when any of its
    values is accepted."""
    query: dict[QueryName, Accepted] = Field(default_factory=dict)
    """Query parameter → accepted values, compared percent-decoded."""


class HeaderChanges(Model):
    """Changes to the headers of the candidate's copy only; the primary's request is untouched.
    Applied in the order remove, set, add."""

    set: dict[HeaderName, Text] = Field(default_factory=dict)
    """Replace every value of the header with this one (or add it when absent)."""
    add: dict[HeaderName, Text] = Field(default_factory=dict)
    """Add a value, keeping any the request already has."""
    remove: list[HeaderName] = Field(default_factory=list)

    @model_validator(mode="after")
    def _not_protected(self) -> HeaderChanges:
        for name in [*self.set, *self.add, *self.remove]:
            if name.lower() in PROTECTED_HEADERS:
                raise ValueError(
                    f'cannot change "{name}": it frames the request, belongs to one connection '
                    "or marks the copy as dark traffic"
                )
        return self


class RewritePrefix(Model):
    """Replace a leading path prefix on the candidate's copy (``/v1/users`` → ``/v2/users``).

    The prefix matches whole segments (``/v1`` matches ``/v1`` and ``/v1/x``, not ``/v10``) and
    is compared with the raw, still percent-encoded path; the query is kept."""

    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True)

    from_: PathPrefix = Field(alias="from")
    to: PathPrefix


class MirrorRule(Model):
    """One entry of ``mirror.rules``."""

    match: EndpointMatch
    """An endpoint pattern: ``GET /users/{id}``, ``GET,POST /api/**``, ``/static/*`` (any
    method), matched against the client's path without its query."""
    when: RuleConditions | None = None
    mirror: bool = True
    """``false``: requests this rule matches are never mirrored."""
    sample_rate: Fraction | None = None
    """The rate for this route; unset: ``mirror.sample_rate``. Sticky like the global one."""
    allow_unsafe: bool = False
    """Mirror this rule's methods even where ``mirror.methods`` leaves them out (POST to the
    candidate, for a route that is safe to write to). The rule must name its methods."""
    rewrite_prefix: RewritePrefix | None = None
    headers: HeaderChanges | None = None
    diff: DiffRules | None = None
    """Comparison overrides for the endpoints this rule matches. They become an entry of
    ``diff.endpoints`` (before the ones written there) and so apply to every compared request
    whose endpoint matches, whichever mirror rule admitted it."""

    @field_validator("allow_unsafe")
    @classmethod
    def _named_methods(cls, value: bool, info: ValidationInfo) -> bool:
        match = info.data.get("match")
        if value and match is not None and EndpointPattern.parse(match).methods is None:
            raise ValueError(
                f'the match must name its methods (e.g. "POST {match}"), so unsafe methods '
                "are never mirrored by accident"
            )
        return value

    @field_validator("diff")
    @classmethod
    def _no_conditions(cls, value: DiffRules | None, info: ValidationInfo) -> DiffRules | None:
        if value is not None and info.data.get("when") is not None:
            raise ValueError(
                "cannot be combined with when: comparison rules apply per endpoint; put them "
                "in a rule without when, or in diff.endpoints"
            )
        return value


# --- the log --------------------------------------------------------------------------------


class LogConfig(Model):
    path: Annotated[str, Field(min_length=1), AfterValidator(_single_line)] = "-"
    """A file, or ``-`` for standard output."""
    redact: list[PointerPattern] = Field(default_factory=list)
    """Body fields whose values are replaced with "[redacted]" in logged values."""
    redact_query: Annotated[list[QueryName], AfterValidator(_lower_all)] = Field(
        default_factory=lambda: list(DEFAULT_REDACT_QUERY)
    )
    """Query parameters whose values are replaced with "[redacted]" in the logged ``path``
    (and in error details), compared case-insensitively. Setting it replaces the list."""
    flush_interval: Annotated[float, Field(gt=0)] = 0.2
    max_bytes: Annotated[int, BeforeValidator(_parse_size), Field(ge=KIB)] | None = None
    """Rotate the file before it would grow past this size: it becomes ``PATH.1``, older
    ones ``PATH.2`` and so on. Safe with several worker processes. Unset: never rotated here
    (rotate with logrotate and SIGHUP instead)."""
    backups: Annotated[int, Field(ge=0, le=1000)] = 5
    """Rotated files kept, ``PATH.1`` (newest) to ``PATH.N``; 0 keeps none."""
    max_buffer_bytes: Annotated[int, BeforeValidator(_parse_size), Field(ge=KIB)] = 16 * MIB
    """Lines waiting for a pipe or terminal (``-``, when standard output is one) whose reader
    is behind; beyond it they are dropped and counted, so the proxy never waits for it."""


# --- noise ----------------------------------------------------------------------------------


class NoiseConfig(Model):
    """How differences are told from noise when a ``secondary`` is configured.

    Per endpoint and place (array indices counted together), R counts exchanges where the
    candidate differed from the primary, N those where the secondary (the primary's version
    again) differed from the primary, T the compared exchanges. A candidate difference at a
    place where the secondary has differed is noise, unless R > N, |R-N|/(R+N) > ``relative``
    and |R-N|/T > ``absolute``: then the candidate differs there clearly more often than the
    noise explains, and its differences stay real. Without a secondary nothing is noise."""

    relative: Fraction = 0.2
    absolute: Fraction = 0.0003
    state_path: str | None = None
    """A small JSON file the counts are saved to, every ``save_interval`` and at shutdown, and
    read back at start, so noise learned survives restarts; unset: counts start afresh each
    time. With several worker processes each keeps its own file, the path with ``.N`` (its
    index) appended. A file there that is not a state file is never written over (the counts
    are then not saved). Takes effect only after a restart."""
    save_interval: Seconds = 60.0
    """Seconds between saves of the counts, when they changed; a reload applies it at once."""
    max_endpoints: Count = 500
    """Endpoints tracked; differences on endpoints beyond it are never classed as noise."""
    max_paths: Count = 200
    """Places tracked per endpoint; differences at places beyond it are never noise."""


# --- capture --------------------------------------------------------------------------------


class CaptureRule(Model):
    """One entry of ``capture.rules``: include or exclude the requests of some endpoints."""

    match: EndpointMatch
    """An endpoint pattern, as in ``mirror.rules``: ``GET /users/{id}``, ``/admin/**``."""
    capture: bool = True
    """``false``: requests this rule matches are never captured."""
    sample_rate: Fraction | None = None
    """The rate for this route; unset: ``capture.sample_rate``."""


class CaptureConfig(Model):
    """Writes sampled exchanges of the primary path (request, and the primary's response) to
    files of HAR 1.2 entries, one JSON object per line, for ``shadowproxy replay``. Independent
    of mirroring: a request is captured whether or not it is mirrored."""

    path: str
    """The file written; rotated files are kept next to it as ``NAME-<UTC time>.EXT``. With
    several worker processes each writes its own file, ``NAME.w<N>.EXT``."""
    sample_rate: Fraction = 1.0
    rules: list[CaptureRule] = Field(default_factory=list)
    """In order, the first rule whose ``match`` fits a request decides for it; requests no
    rule fits are captured at ``sample_rate``."""
    max_body_bytes: Bytes = MIB
    """Bodies are kept up to this size each; a longer request body is cut (the entry is then
    not replayed), a longer response body is kept as a prefix with its size."""
    max_file_bytes: Annotated[int, BeforeValidator(_parse_size), Field(ge=KIB)] = 100 * MIB
    """The file is rotated before it would grow past this size."""
    keep_files: Annotated[int, Field(ge=0)] = 5
    """Rotated files kept besides the one being written; older ones are deleted."""
    max_buffer_bytes: Annotated[int, BeforeValidator(_parse_size), Field(ge=KIB)] = 16 * MIB
    """Exchanges waiting to be written and the bodies of those under way, at most; when full,
    new ones (and those whose bodies would pass it) are dropped and counted."""
    flush_interval: Seconds = 0.5
    """Seconds between writes of buffered lines."""


# --- client limits ------------------------------------------------------------------------


class LimitsConfig(Model):
    """Bounds on what clients may send and how long they may take; enforced on the proxy
    listener before anything reaches the primary."""

    header_timeout: Seconds = 10.0
    """Seconds from the first byte of a request head to its end; a client that trickles its
    headers in (slowloris) gets 408 and is cut off."""
    idle_timeout: Seconds = 75.0
    """Seconds a connection may sit idle (before its first request or between two) before the
    proxy closes it, and a request body may stall before the request gets 408 (the primary's
    request is then broken off). Keep it above the idle timeout of a load balancer in front."""
    max_header_size: Annotated[int, BeforeValidator(_parse_size), Field(ge=KIB, le=MIB)] = 8190
    """The request line and each header field (name and value) at most; larger: 431."""
    max_headers: Annotated[int, Field(ge=1, le=10_000)] = 100
    """Header fields per request at most; more: 431."""
    max_request_body_bytes: Bytes | None = None
    """Request bodies larger than this get 413: by Content-Length before anything reaches
    the primary; a chunked body when it grows past the size, and the primary's request is
    then broken off, never completed. Unset: no cap."""
    max_websocket_message_bytes: Annotated[int, BeforeValidator(_parse_size), Field(ge=1)] = (
        16 * MIB
    )
    """A WebSocket message (from the client or the primary) at most: each is held whole on
    its way through. A larger one closes the conversation on both sides with 1009 (message
    too big)."""


# --- the whole file -------------------------------------------------------------------------


class TLSListener(Model):
    """An HTTPS listener beside ``listen``; the certificate is read again on every reload."""

    address: Address
    cert_file: str
    key_file: str


class ReloadConfig(Model):
    watch: bool = True
    """Reload when the config file changes, besides on SIGHUP."""
    poll_interval: Annotated[float, Field(gt=0)] = 2.0


class Config(Model):
    listen: Address = Field(default_factory=lambda: HostPort(host="0.0.0.0", port=8080))
    admin: Address = Field(default_factory=lambda: HostPort(host="127.0.0.1", port=9901))
    listen_tls: TLSListener | None = None
    primary: Backend
    candidate: CandidateBackend
    secondary: CandidateBackend | None = None
    """A second instance of the primary's version, sent the same mirrored requests: where it
    differs from the primary is noise (timestamps, ids, orderings), see ``noise``. Unset: no
    noise detection, every difference is real."""
    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    mirror: MirrorConfig = Field(default_factory=MirrorConfig)
    diff: DiffConfig = Field(default_factory=DiffConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    capture: CaptureConfig | None = None
    """Sampled exchanges written for ``shadowproxy replay``; unset: nothing is captured."""
    shutdown_timeout: Seconds = 15.0
    """On SIGTERM, client requests under way get this long to finish."""
    reload: ReloadConfig = Field(default_factory=ReloadConfig)
    admin_token: str | None = None
    """Bearer token for /config and /report when the admin listener is not on loopback (without
    one they answer 403 there); ``SHADOWPROXY_ADMIN_TOKEN`` in the environment takes precedence."""

    def effective_admin_token(self) -> str | None:
        return os.environ.get(ENV_ADMIN_TOKEN) or self.admin_token

    @model_validator(mode="after")
    def _distinct_backends(self) -> Config:
        if self.primary.url == self.candidate.url:
            raise ValueError("candidate.url: must differ from primary.url")
        if self.secondary is not None:
            if self.secondary.url == self.primary.url:
                raise ValueError("secondary.url: must differ from primary.url")
            if self.secondary.url == self.candidate.url:
                raise ValueError("secondary.url: must differ from candidate.url")
        return self

    def reloaded(self, new: Config) -> Config:
        """``new`` as a reload applies it to a proxy running ``self``: the keys that take
        effect only after a restart keep their running values. Everything that reads the config
        (the admin listener's authorisation, ``/config``, ``/readyz``, the primary path) then
        sees what is in force, not what the file asks for next."""
        kept: dict[str, Any] = {key: getattr(self, key) for key in RESTART_ONLY_KEYS}
        kept["log"] = new.log.model_copy(update={"path": self.log.path})
        kept["noise"] = new.noise.model_copy(update={"state_path": self.noise.state_path})
        return new.model_copy(update=kept)

    def warnings(self) -> list[str]:
        """What is valid but probably not meant; said at start, on reload and by check-config."""
        found = [
            _literal_id_warning(f"diff.endpoints[{i}].match", entry.match)
            for i, entry in enumerate(self.diff.endpoints)
        ]
        found += [
            _literal_id_warning(f"mirror.rules[{i}].match (it sets diff)", rule.match)
            for i, rule in enumerate(self.mirror.rules)
            if rule.diff is not None
        ]
        return [warning for warning in found if warning is not None]

    def unreadable_files(self) -> list[str]:
        """``key: path: why`` for each certificate, key or CA file set that cannot be read;
        checked at start so that the message names the key, where ssl's does not even name
        the file."""
        files: list[tuple[str, str | None]] = []
        if self.listen_tls is not None:
            files += [
                ("listen_tls.cert_file", self.listen_tls.cert_file),
                ("listen_tls.key_file", self.listen_tls.key_file),
            ]
        for name in ("primary", "candidate", "secondary"):
            backend: Backend | None = getattr(self, name)
            if backend is not None:
                tls = backend.tls
                files += [
                    (f"{name}.tls.ca_file", tls.ca_file),
                    (f"{name}.tls.cert_file", tls.cert_file),
                    (f"{name}.tls.key_file", tls.key_file),
                ]
        problems = []
        for key, path in files:
            if path is None:
                continue
            try:
                with open(path, "rb"):
                    pass
            except OSError as error:
                problems.append(f"{key}: {path}: {error.strerror or error}")
        return problems

    def restart_only_changes(self, new: Config) -> list[str]:
        """The keys ``new`` changes that take effect only after a restart."""
        changed = [key for key in RESTART_ONLY_KEYS if getattr(self, key) != getattr(new, key)]
        if self.log.path != new.log.path:
            changed.append("log.path")
        if self.noise.state_path != new.noise.state_path:
            changed.append("noise.state_path")
        return changed

    def digest(self) -> str:
        """A short stable hash, logged on reload so operators can tell configs apart."""
        dumped = orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(dumped).hexdigest()[:16]

    def effective_diff(self) -> DiffConfig:
        """The comparison rules to run: ``diff``, with one ``diff.endpoints`` entry per mirror
        rule that sets ``diff`` (its ``match`` and its overrides), placed before the entries
        written in ``diff.endpoints``. Pass this, not ``diff``, to the comparison engine."""
        from_rules = [
            EndpointDiffRules(match=rule.match, **dict(rule.diff))
            for rule in self.mirror.rules
            if rule.diff is not None
        ]
        if not from_rules:
            return self.diff
        return self.diff.model_copy(update={"endpoints": [*from_rules, *self.diff.endpoints]})

    def redacted(self) -> dict[str, Any]:
        """The active config as served by the admin listener: URLs stripped of credentials,
        and the values of secret-looking headers and query parameters that mirror rules set
        or match on (``Authorization``, ``X-Api-Key``, ``token``...) replaced."""
        data = self.model_dump(mode="json")
        if data.get("admin_token"):
            data["admin_token"] = "[redacted]"
        for name in ("primary", "candidate", "secondary"):
            backend = data.get(name)
            if isinstance(backend, dict) and isinstance(backend.get("url"), str):
                backend["url"] = without_credentials(backend["url"])
        query_secrets = set(self.log.redact_query)
        for rule in data.get("mirror", {}).get("rules", []):
            changes: dict[str, Any] = rule.get("headers") or {}
            conditions: dict[str, Any] = rule.get("when") or {}
            shown: list[dict[str, Any]] = [
                values
                for values in (changes.get("set"), changes.get("add"), conditions.get("header"))
                if values
            ]
            for values in shown:
                for header in values:
                    if secret_header(header):
                        values[header] = "[redacted]"
            query: dict[str, Any] = conditions.get("query") or {}
            for parameter in query:
                if parameter.lower() in query_secrets:
                    query[parameter] = "[redacted]"
        return data


# --- loading and error messages -------------------------------------------------------------


def _location(loc: tuple[int | str, ...], *, last_is_a_key: bool = False) -> str:
    """``loc`` as the operator wrote it; ``last_is_a_key``: the last item is the operator's
    own key (an unknown one), shown whatever it is called, ``list`` and ``str`` included."""
    parts: list[str] = []
    for index, item in enumerate(loc):
        if last_is_a_key and index == len(loc) - 1:
            parts.append(("." if parts else "") + str(item))
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item.startswith(("function-", "tagged-union")) or item in (
            "str", "list", "dict", "[key]",
        ):  # fmt: skip
            continue  # validator-internal names say nothing to an operator
        elif item == "":
            parts.append('[""]')  # an empty mapping key
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "(top level)"


def _message(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if message[1:2].isupper():
        return message  # an acronym ("JSON Pointer ...") keeps its case
    return message[:1].lower() + message[1:]


def format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        message = _message(item)
        location = _location(item["loc"], last_is_a_key=item["type"] == "extra_forbidden")
        if ":" in message.split(" ", 1)[0]:  # a validator that already names its key
            lines.append(message)
        else:
            lines.append(f"{location}: {message}")
    return "\n".join(dict.fromkeys(lines))


MAX_CONFIG_VALUES = 100_000
"""Values a config may hold once YAML aliases are expanded: a real one holds a few thousand,
and a few lines of nested aliases would otherwise expand to billions for the validators."""


def _check_values(data: Any, where: tuple[int | str, ...], sizes: dict[int, int]) -> int:
    """How many values ``data`` holds, aliases expanded; integers past 64 bits, which fit no
    setting and which the config's digest (JSON) cannot hold, are refused by name. A mapping
    or list reached again through an alias is counted again but not walked again."""
    if isinstance(data, dict | list):
        known = sizes.get(id(data))
        if known is not None:
            return known
        items = data.items() if isinstance(data, dict) else enumerate(data)
        size = 1
        for key, value in items:
            if isinstance(data, dict) and not isinstance(key, str):
                # YAML reads `null:`, `2024-01-01:` or `yes:` as no string at all.
                raise ConfigError(
                    f"{_location(where)}: the key {yaml.safe_dump(key).split(chr(10))[0]} "
                    "must be a string (quote it)"
                )
            size += _check_values(value, (*where, key), sizes)
            if size > MAX_CONFIG_VALUES:
                raise ConfigError(
                    f"{_location(where) or 'config'}: more than {MAX_CONFIG_VALUES:,} values "
                    "(YAML aliases expanding?)"
                )
        sizes[id(data)] = size
        return size
    if isinstance(data, int) and not -MAX_NUMBER <= data <= MAX_NUMBER:
        raise ConfigError(f"{_location(where)}: the number is too large")
    return 1


def parse_config(data: Any, source: str = "config") -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys to values")
    try:
        _check_values(data, (), {})
        return Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error)) from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None


def load_config(path: str | os.PathLike[str]) -> Config:
    return parse_config_text(read_config_text(path), str(path))


def read_config_text(path: str | os.PathLike[str]) -> str:
    file = Path(path)
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: config file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{file}: cannot read config file: {error}") from None


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: the second ``mirror:``
    block of a long file would otherwise replace the first without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # refused as it always was, by the constructor
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"the key {key!r} is given twice",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_config_text(text: str, source: str) -> Config:
    """The config a file's text describes; ``source`` names the file in messages."""
    return parse_config(read_yaml(text, source), source)


def read_yaml(text: str, source: str) -> Any:
    """A config file's YAML, read safely, a key given twice refused; ConfigError on error."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown place"
        raise ConfigError(f"{source}: YAML syntax error at {where}: {error.problem}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: YAML error: {error}") from None
    except ValueError as error:  # a value YAML reads as a date that is none: 2024-02-30
        raise ConfigError(f"{source}: YAML value error: {error}") from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply") from None
