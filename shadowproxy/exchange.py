"""The values the proxy path hands to comparison: immutable, picklable, free of sockets.

The proxy path fills them; the comparison, the noise model and the log read them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

Headers = tuple[tuple[str, str], ...]
"""Header pairs in the order received; repeated names stay repeated."""


def first_header(headers: Headers, name: str) -> str | None:
    """The first value of ``name`` (any case) in ``headers``."""
    lowered = name.lower()
    for key, value in headers:
        if key.lower() == lowered:
            return value
    return None


class FailureKind(enum.StrEnum):
    """Why a mirrored backend gave no usable response."""

    TIMEOUT = "timeout"
    REFUSED = "refused"
    RESET = "reset"
    INVALID_RESPONSE = "invalid_response"
    TOO_LARGE = "too_large"


class Outcome(enum.StrEnum):
    MATCH = "match"
    MISMATCH = "mismatch"
    CANDIDATE_ERROR = "candidate_error"


@dataclass(frozen=True, slots=True)
class RequestSnapshot:
    id: str
    method: str
    path: str
    """The raw path with its query, as the client sent it."""
    headers: Headers
    body: bytes
    client_ip: str


@dataclass(frozen=True, slots=True)
class Response:
    """A backend's answer, with its body captured up to the comparison cap."""

    status: int
    headers: Headers
    body: bytes
    size: int
    """Bytes of body in all; larger than ``len(body)`` when the capture was cut. A mirrored
    body is not read past the cap: its Content-Length stands for its size."""
    latency_ms: float
    truncated: bool = False
    size_known: bool = True
    """False when the body was not read to its end and declared no length: ``size`` is then
    only what was read, a lower bound."""

    def header(self, name: str) -> str | None:
        return first_header(self.headers, name)


@dataclass(frozen=True, slots=True)
class Failure:
    kind: FailureKind
    detail: str
    latency_ms: float


@dataclass(frozen=True, slots=True)
class Exchange:
    """One sampled request with every backend's answer: what comparison works on."""

    request: RequestSnapshot
    endpoint: str
    started_at: float
    """Wall-clock time (epoch seconds) the request arrived."""
    primary: Response
    candidate: Response | Failure
    secondary: Response | Failure | None = None
    tags: dict[str, str] = field(default_factory=dict)
