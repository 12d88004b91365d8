"""Realistic discrepancy logs with known properties, for tests and benchmarks.

``exchange_record`` builds one record in the proxy's log format; ``generate`` yields a seeded
stream of them over a set of endpoint profiles; ``write_log`` writes such a stream as JSON Lines
(gzip-compressed when the name ends in ``.gz``).
"""

from __future__ import annotations

import gzip
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from shadowproxy.report.timestamps import format_ts

DEFAULT_START = 1_795_804_800.0
"""2026-11-27T18:40:00Z."""
DEFAULT_RATE_PER_SECOND = 250.0
OTHER_EVENT_EVERY = 5000
"""One non-exchange line (a config reload) per this many records."""
ERROR_KINDS = ("timeout", "refused", "reset", "invalid_response", "too_large")
TIMEOUT_MS = 5000.0


@dataclass(frozen=True, slots=True)
class Profile:
    """How one endpoint behaves: its share of traffic, failure rates and latency."""

    method: str
    template: str
    """A path with ``{id}`` where an id goes."""
    weight: float
    mismatch_rate: float
    error_rate: float
    median_ms: float
    candidate_slowdown: float = 1.0

    @property
    def endpoint(self) -> str:
        return f"{self.method} {self.template}"


DEFAULT_PROFILES: tuple[Profile, ...] = (
    Profile("GET", "/users/{id}", 30, 0.002, 0.001, 3.0),
    Profile("GET", "/users/{id}/orders", 15, 0.03, 0.002, 8.0, 1.3),
    Profile("POST", "/orders", 10, 0.01, 0.01, 12.0, 1.1),
    Profile("GET", "/products", 20, 0.0, 0.0, 5.0),
    Profile("GET", "/products/{id}", 12, 0.05, 0.0, 4.0, 0.9),
    Profile("PUT", "/users/{id}", 5, 0.001, 0.0005, 6.0),
    Profile("DELETE", "/sessions/{id}", 3, 0.0, 0.02, 2.0),
    Profile("GET", "/search", 5, 0.2, 0.005, 25.0, 1.5),
)


def exchange_record(
    *,
    endpoint: str = "GET /users/{id}",
    outcome: str = "match",
    ts: float = DEFAULT_START,
    path: str | None = None,
    primary_status: int = 200,
    candidate_status: int | None = 200,
    primary_latency_ms: float = 3.0,
    candidate_latency_ms: float = 3.0,
    error: str | None = None,
    differences: Sequence[dict[str, Any]] = (),
    difference_count: int | None = None,
    noise: Sequence[dict[str, Any]] | None = None,
    secondary: dict[str, Any] | None = None,
    record_id: str | None = None,
) -> dict[str, Any]:
    """One ``exchange`` record as the proxy logs it; a candidate ``error`` makes it failed."""
    method, _, template = endpoint.partition(" ")
    candidate: dict[str, Any]
    if error is not None:
        candidate = {
            "status": None,
            "latency_ms": candidate_latency_ms,
            "bytes": 0,
            "error": error,
            "detail": f"candidate {error}",
        }
    else:
        candidate = {
            "status": candidate_status,
            "latency_ms": candidate_latency_ms,
            "bytes": 512,
            "error": None,
        }
    record: dict[str, Any] = {
        "ts": format_ts(ts, micros=True),
        "event": "exchange",
        "id": record_id or uuid.uuid4().hex,
        "method": method,
        "path": path or template.replace("{id}", "42"),
        "endpoint": endpoint,
        "outcome": outcome,
        "primary": {"status": primary_status, "latency_ms": primary_latency_ms, "bytes": 512},
        "candidate": candidate,
        "differences": list(differences),
        "difference_count": len(differences) if difference_count is None else difference_count,
        "body_kind": "json",
        "notes": [],
        "excerpt": None,
    }
    if noise is not None:
        record["noise"] = list(noise)
    if secondary is not None:
        record["secondary"] = secondary
    return record


def difference(
    path: str, primary: Any, candidate: Any, *, where: str = "body", kind: str = "changed"
) -> dict[str, Any]:
    return {"where": where, "path": path, "kind": kind, "primary": primary, "candidate": candidate}


def _differences(rng: random.Random, profile: Profile) -> list[dict[str, Any]]:
    roll = rng.random()
    if roll < 0.5:
        index = rng.randrange(20)
        return [
            difference(f"/items/{index}/price", 9.99, 10.0),
            difference(f"/items/{index}/currency", "EUR", "eur"),
        ]
    if roll < 0.7:
        return [difference("/user/email", "a@example.com", None, kind="removed")]
    if roll < 0.85:
        return [difference("content-type", "application/json", "text/json", where="header")]
    if roll < 0.95:
        return [difference("/total", 120, "120", kind="type")]
    status = 500 if profile.method == "GET" else 409
    return [difference("", 200, status, where="status")]


def generate(
    count: int,
    *,
    seed: int = 1,
    start: float = DEFAULT_START,
    rate_per_second: float = DEFAULT_RATE_PER_SECOND,
    profiles: Sequence[Profile] = DEFAULT_PROFILES,
    other_events: bool = True,
) -> Iterator[dict[str, Any]]:
    """``count`` log records (a few of them other events) in time order, seeded."""
    rng = random.Random(seed)
    weights = [p.weight for p in profiles]
    step = 1.0 / rate_per_second
    chosen = rng.choices(profiles, weights=weights, k=count)
    for n, profile in enumerate(chosen):
        ts = start + n * step
        if other_events and n % OTHER_EVENT_EVERY == OTHER_EVENT_EVERY - 1:
            yield {
                "ts": format_ts(ts, micros=True),
                "event": "config_reloaded",
                "digest": "0f3a9c2e",
            }
            continue
        primary_ms = rng.lognormvariate(0, 0.5) * profile.median_ms
        candidate_ms = rng.lognormvariate(0, 0.5) * profile.median_ms * profile.candidate_slowdown
        path = profile.template.replace("{id}", str(rng.randrange(1, 100_000)))
        if rng.random() < 0.3:
            path += "?verbose=1"
        roll = rng.random()
        if roll < profile.error_rate:
            error = rng.choice(ERROR_KINDS)
            yield exchange_record(
                endpoint=profile.endpoint,
                outcome="candidate_error",
                ts=ts,
                path=path,
                primary_latency_ms=primary_ms,
                candidate_latency_ms=TIMEOUT_MS if error == "timeout" else candidate_ms,
                error=error,
                record_id=f"{seed:x}-{n:x}",
            )
        elif roll < profile.error_rate + profile.mismatch_rate:
            differences = _differences(rng, profile)
            status = differences[0]["candidate"] if differences[0]["where"] == "status" else 200
            yield exchange_record(
                endpoint=profile.endpoint,
                outcome="mismatch",
                ts=ts,
                path=path,
                candidate_status=status,
                primary_latency_ms=primary_ms,
                candidate_latency_ms=candidate_ms,
                differences=differences,
                record_id=f"{seed:x}-{n:x}",
            )
        else:
            yield exchange_record(
                endpoint=profile.endpoint,
                ts=ts,
                path=path,
                primary_latency_ms=primary_ms,
                candidate_latency_ms=candidate_ms,
                record_id=f"{seed:x}-{n:x}",
            )


class _Writer(Protocol):
    def write(self, data: bytes, /) -> int: ...


def write_records(
    records: Iterator[dict[str, Any]] | Sequence[dict[str, Any]], out: _Writer
) -> int:
    written = 0
    for record in records:
        out.write(orjson.dumps(record) + b"\n")
        written += 1
    return written


def write_log(path: str | Path, count: int, **options: Any) -> int:
    """Write ``count`` generated records to ``path``; returns the number written."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as out:
        return write_records(generate(count, **options), out)
