"""The one config model: every option, its default and its bounds are declared here.

`load_config` reads YAML with `safe_load`, validates it and raises `ConfigError` with messages
that name the offending key (``mirror.sample_rate: must be between 0 and 1``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
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
    field_validator,
    model_validator,
)

ENV_CONFIG = "SHADOWPROXY_CONFIG"

KIB = 1024
MIB = 1024 * KIB

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

# Header values that never reach the log, the capture files or the admin endpoints.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


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
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError('must be "host:port" with a port from 0 to 65535')
    host = host.strip("[]") or "0.0.0.0"
    return HostPort(host=host, port=int(port))


def _parse_size(value: Any) -> Any:
    """Accept 1048576, "1MiB", "512 KiB", "10MB"."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]i?[bB]?|[bB])?\s*", value)
        if not match:
            raise ValueError('must be a number of bytes such as 1048576 or "1MiB"')
        number, unit = float(match.group(1)), (match.group(2) or "b").lower().rstrip("b")
        factors = {"": 1, "k": 1000, "ki": KIB, "m": 1000**2, "mi": MIB, "g": 1000**3, "gi": KIB**3}
        return int(number * factors[unit])
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
    model_config = ConfigDict(extra="forbid", frozen=True)


class HostPort(Model):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return self.host in ("127.0.0.1", "::1", "localhost") or self.host.startswith("127.")


Address = Annotated[HostPort, BeforeValidator(_parse_host_port)]


# --- backends -------------------------------------------------------------------------------


class Backend(Model):
    """One upstream: the primary, the candidate or the secondary."""

    url: str
    timeout: Seconds = 30.0
    connect_timeout: Seconds = 5.0
    host: str | None = None
    """Host header sent to this backend; by default the client's Host is forwarded."""
    max_connections: Count = 100
    keepalive_timeout: Seconds = 15.0
    """Idle pooled connections close after this long; keep it below the backend's own."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


class CandidateBackend(Backend):
    timeout: Seconds = 5.0


# --- mirroring ------------------------------------------------------------------------------


class MirrorConfig(Model):
    sample_rate: Fraction = 1.0
    methods: Methods = Field(default_factory=lambda: list(SAFE_METHODS))
    """Unsafe methods are mirrored only when listed here explicitly."""
    max_in_flight: Count = 100
    max_body_bytes: Bytes = 8 * MIB
    """Requests with larger bodies are proxied but not mirrored."""
    shutdown_grace: Annotated[float, Field(ge=0)] = 2.0
    """Seconds pending mirrors may still finish after the listener closes."""


# --- comparison -----------------------------------------------------------------------------


def _tolerance(value: Any) -> Any:
    """Relative tolerances are written as percentages ("0.1%"), absolute ones as numbers."""
    if isinstance(value, str) and value.strip().endswith("%"):
        return {"relative": float(value.strip()[:-1]) / 100}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"absolute": float(value)}
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


class Unordered(Model):
    path: str
    key: str | None = None
    """Match array elements by this member (``/items`` by ``id``) instead of by position."""


def _unordered(value: Any) -> Any:
    return {"path": value} if isinstance(value, str) else value


def _pointer_pattern(value: str) -> str:
    if value != "" and not value.startswith("/"):
        raise ValueError(f'JSON Pointer pattern "{value}" must start with "/"')
    return value


PointerPattern = Annotated[str, AfterValidator(_pointer_pattern)]


class DiffRules(Model):
    """Rules that apply globally, and again per endpoint where an endpoint overrides them."""

    ignore: list[PointerPattern] = Field(default_factory=list)
    """JSON Pointer patterns: ``*`` matches one key or index, ``**`` any depth."""
    unordered: list[Annotated[Unordered, BeforeValidator(_unordered)]] = Field(default_factory=list)
    tolerance: Annotated[Tolerance, BeforeValidator(_tolerance)] | None = None
    ignore_headers: HeaderNames = Field(default_factory=list)
    null_equals_missing: bool | None = None


class EndpointDiffRules(DiffRules):
    match: str
    """An endpoint template (``GET /users/{id}``, method optional) or a glob (``/api/*``)."""


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


# --- the log --------------------------------------------------------------------------------


class LogConfig(Model):
    path: str = "-"
    """A file, or ``-`` for standard output."""
    redact: list[PointerPattern] = Field(default_factory=list)
    """Body fields whose values are replaced with "[redacted]" in logged values."""
    flush_interval: Annotated[float, Field(gt=0)] = 0.2


# --- the whole file -------------------------------------------------------------------------


class Config(Model):
    listen: Address = Field(default_factory=lambda: HostPort(host="0.0.0.0", port=8080))
    admin: Address = Field(default_factory=lambda: HostPort(host="127.0.0.1", port=9901))
    primary: Backend
    candidate: CandidateBackend
    mirror: MirrorConfig = Field(default_factory=MirrorConfig)
    diff: DiffConfig = Field(default_factory=DiffConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    max_request_body_bytes: Bytes | None = None
    """Requests with larger bodies get 413 before anything reaches the primary; unset: no cap."""
    shutdown_timeout: Seconds = 15.0
    """On SIGTERM, client requests under way get this long to finish."""

    @model_validator(mode="after")
    def _distinct_backends(self) -> Config:
        if self.primary.url == self.candidate.url:
            raise ValueError("candidate.url: must differ from primary.url")
        return self

    def digest(self) -> str:
        """A short stable hash, logged on reload so operators can tell configs apart."""
        dumped = orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(dumped).hexdigest()[:16]

    def redacted(self) -> dict[str, Any]:
        """The active config as served by the admin listener: URLs stripped of credentials."""
        data = self.model_dump(mode="json")
        for name in ("primary", "candidate", "secondary"):
            backend = data.get(name)
            if isinstance(backend, dict):
                backend["url"] = re.sub(r"//[^/@]*@", "//[redacted]@", backend["url"])
        return data


# --- loading and error messages -------------------------------------------------------------


def _location(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item.startswith(("function-", "tagged-union")) or item in ("str", "list", "dict"):
            continue  # validator-internal names say nothing to an operator
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
    return message[:1].lower() + message[1:]


def format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        message = _message(item)
        location = _location(item["loc"])
        if ":" in message.split(" ", 1)[0]:  # a validator that already names its key
            lines.append(message)
        else:
            lines.append(f"{location}: {message}")
    return "\n".join(dict.fromkeys(lines))


def parse_config(data: Any, source: str = "config") -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys to values")
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error)) from None


def load_config(path: str | os.PathLike[str]) -> Config:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: config file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{file}: cannot read config file: {error}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown place"
        raise ConfigError(f"{file}: YAML syntax error at {where}: {error.problem}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{file}: YAML error: {error}") from None
    return parse_config(data, str(file))
