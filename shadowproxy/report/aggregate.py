"""The incremental aggregator: log records in, bounded statistics out.

``Aggregator.add(record)`` takes one decoded log line at a time, from a file or from the running
proxy, and keeps memory bounded whatever the traffic:

- at most ``MAX_ENDPOINTS`` endpoints by name; later new ones are counted in ``OTHER_ENDPOINT``;
- per endpoint at most ``MAX_PATHS`` differing paths (and as many noise paths); later new ones
  are counted in an "other paths" total; one example per path, values cut to
  ``PATH_VALUE_CHARS``;
- at most ``MAX_STATUS_PAIRS`` status pairs per endpoint, the rest counted together, and at
  most ``MAX_KINDS`` kinds of difference per path and of candidate error per endpoint;
- ``EXAMPLES_PER_OUTCOME`` example exchanges per endpoint for mismatches and for candidate
  errors (the first ones seen), each with at most ``EXAMPLE_DIFFERENCES`` differences and
  values cut to ``EXAMPLE_VALUE_CHARS``;
- latencies in fixed-size log-scaled histograms (see ``histogram``), time in fixed buckets
  (see ``timeseries``).

So the worst case (every table full of the longest values) stays near 200 MB; typical traffic
takes a few MB.

First come, first kept: with more endpoints than the cap, the ones seen first keep their names.
Latencies count only exchanges both sides answered (a status each), so that the two sides'
percentiles cover the same set; failures are judged by the error rate.
Path counts cover the differences a record lists (the proxy lists at most 50 per exchange), and
array indices in JSON Pointers are generalised to ``*`` (``/items/3/price`` ->
``/items/*/price``), as is any all-digit key, which a pointer cannot tell from an index.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

from shadowproxy.report.histogram import LatencyHistogram
from shadowproxy.report.timeseries import COMPARED, ERRORS, MISMATCHES, TimeSeries
from shadowproxy.report.timestamps import parse_ts

MAX_ENDPOINTS = 300
MAX_PATHS = 100
MAX_STATUS_PAIRS = 100
EXAMPLES_PER_OUTCOME = 3
EXAMPLE_DIFFERENCES = 20
PATH_VALUE_CHARS = 300
EXAMPLE_VALUE_CHARS = 1000
MAX_EXCERPT_CHARS = 8000
MAX_KINDS = 50
MAX_DIFFERENCE_COUNT = 1 << 32
"""The most differences one exchange is taken to have: far more than a body can hold."""
OTHER_ENDPOINT = "(other endpoints)"
OTHER_KIND = "(other kinds)"

EXCHANGE_EVENT = "exchange"
MATCH, MISMATCH, CANDIDATE_ERROR = "match", "mismatch", "candidate_error"
OUTCOMES = frozenset({MATCH, MISMATCH, CANDIDATE_ERROR})
StatusKey = tuple[int | str, int | str]
"""(primary, candidate): a status code, or a failure kind such as "timeout"."""

_INDEX_SEGMENT = re.compile(r"(?<=/)\d+(?=/|$)")
_NUMBER_TYPES = (int, float)


def generalise_path(path: str) -> str:
    """``/items/3/price`` -> ``/items/*/price``: counts one place across array elements."""
    if len(path) > PATH_VALUE_CHARS:
        # Not cached: the cache would keep each long path alive, 16384 of them (a log of
        # 100 kB keys would pin gigabytes); such paths are rare, and cut when kept anyway.
        return _INDEX_SEGMENT.sub("*", path)
    return _generalise_short(path)


@lru_cache(maxsize=16384)
def _generalise_short(path: str) -> str:
    return _INDEX_SEGMENT.sub("*", path)


def _label(text: str) -> str:
    """A name from the log (a place, a kind, a failure) cut as paths are: it is kept as a key."""
    return text if len(text) <= PATH_VALUE_CHARS else text[:PATH_VALUE_CHARS] + "…"


def _count_kind(kinds: dict[str, int], kind: str, n: int = 1) -> None:
    """Count ``n`` of ``kind``; past ``MAX_KINDS`` names, new ones count as ``OTHER_KIND``
    (a log from elsewhere may name a new kind, or failure, on every line)."""
    if kind not in kinds and len(kinds) >= MAX_KINDS:
        kind = OTHER_KIND
    kinds[kind] = kinds.get(kind, 0) + n


def bounded_value(value: Any, limit: int = EXAMPLE_VALUE_CHARS) -> Any:
    """A logged value as is when small, else a cut JSON text ending in a note of the size."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        if len(value) <= limit:
            return value
        return f"{value[:limit]}… (cut, {len(value)} characters)"
    try:
        text = orjson.dumps(value, default=str).decode()
    except orjson.JSONEncodeError:  # nested deeper than orjson writes: from another writer
        return "… (not shown: nested too deep)"
    if len(text) <= limit:
        return value
    return f"{text[:limit]}… (cut, {len(text)} characters of JSON)"


def _status_of(side: Mapping[str, Any]) -> int | str:
    status = side.get("status")
    if isinstance(status, int):
        return status
    error = side.get("error")
    return _label(error) if isinstance(error, str) and error else "error"


@dataclass(slots=True)
class PathStats:
    """One generalised place that differed, with the first difference seen there."""

    where: str
    path: str
    exchanges: int = 0
    """Exchanges with at least one difference here."""
    occurrences: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    example: dict[str, Any] | None = None

    def merge(self, other: PathStats) -> None:
        self.exchanges += other.exchanges
        self.occurrences += other.occurrences
        for kind, n in other.kinds.items():
            _count_kind(self.kinds, kind, n)
        if self.example is None:
            self.example = other.example


@dataclass(slots=True)
class PathTable:
    """Bounded ``PathStats`` keyed by (where, generalised path), plus what did not fit."""

    limit: int = MAX_PATHS
    paths: dict[tuple[str, str], PathStats] = field(default_factory=dict)
    other_exchanges: int = 0
    other_occurrences: int = 0

    def add_all(self, differences: list[Any]) -> None:
        seen: set[tuple[str, str]] = set()
        other_seen = False
        paths = self.paths
        for item in differences:
            if type(item) is not dict:
                continue
            where = item.get("where")
            raw = item.get("path")
            if not isinstance(where, str) or not isinstance(raw, str):
                continue
            where = _label(where)
            key = (where, _label(generalise_path(raw) if where == "body" else raw))
            stats = paths.get(key)
            if stats is None:
                if len(paths) >= self.limit:
                    self.other_occurrences += 1
                    other_seen = True
                    continue
                stats = paths[key] = PathStats(where, key[1])
            kind = item.get("kind")
            kind = _label(kind) if isinstance(kind, str) else "changed"
            if stats.example is None:
                stats.example = {
                    "path": bounded_value(raw, PATH_VALUE_CHARS),
                    "kind": kind,
                    "primary": bounded_value(item.get("primary"), PATH_VALUE_CHARS),
                    "candidate": bounded_value(item.get("candidate"), PATH_VALUE_CHARS),
                }
            stats.occurrences += 1
            _count_kind(stats.kinds, kind)
            if key not in seen:
                seen.add(key)
                stats.exchanges += 1
        if other_seen:
            self.other_exchanges += 1

    def merge(self, other: PathTable) -> None:
        for key, stats in other.paths.items():
            mine = self.paths.get(key)
            if mine is not None:
                mine.merge(stats)
            elif len(self.paths) < self.limit:
                copy = PathStats(stats.where, stats.path)
                copy.merge(stats)
                self.paths[key] = copy
            else:
                self.other_exchanges += stats.exchanges
                self.other_occurrences += stats.occurrences
        self.other_exchanges += other.other_exchanges
        self.other_occurrences += other.other_occurrences


class EndpointStats:
    """Everything counted for one endpoint (or for the "other" bucket, or overall)."""

    __slots__ = (
        "candidate",
        "candidate_errors",
        "compared",
        "difference_count",
        "error_kinds",
        "examples",
        "matches",
        "mismatches",
        "noise",
        "paths",
        "primary",
        "secondary",
        "secondary_errors",
        "status_pairs",
        "status_pairs_other",
    )

    def __init__(self) -> None:
        self.compared = 0
        self.matches = 0
        self.mismatches = 0
        self.candidate_errors = 0
        self.difference_count = 0
        self.error_kinds: dict[str, int] = {}
        self.status_pairs: dict[StatusKey, int] = {}
        self.status_pairs_other = 0
        self.paths = PathTable()
        self.noise = PathTable()
        self.primary = LatencyHistogram()
        self.candidate = LatencyHistogram()
        self.secondary: LatencyHistogram | None = None
        self.secondary_errors = 0
        self.examples: dict[str, list[dict[str, Any]]] = {MISMATCH: [], CANDIDATE_ERROR: []}

    def add_status_pair(self, key: StatusKey, n: int = 1) -> None:
        pairs = self.status_pairs
        if key in pairs:
            pairs[key] += n
        elif len(pairs) < MAX_STATUS_PAIRS:
            pairs[key] = n
        else:
            self.status_pairs_other += n

    def merge(self, other: EndpointStats, *, details: bool = True) -> None:
        """Add ``other``'s counts; ``details`` also merges paths and examples."""
        self.compared += other.compared
        self.matches += other.matches
        self.mismatches += other.mismatches
        self.candidate_errors += other.candidate_errors
        self.difference_count += other.difference_count
        for kind, n in other.error_kinds.items():
            _count_kind(self.error_kinds, kind, n)
        for key, n in other.status_pairs.items():
            self.add_status_pair(key, n)
        self.status_pairs_other += other.status_pairs_other
        self.primary.merge(other.primary)
        self.candidate.merge(other.candidate)
        if other.secondary is not None:
            if self.secondary is None:
                self.secondary = LatencyHistogram()
            self.secondary.merge(other.secondary)
        self.secondary_errors += other.secondary_errors
        if details:
            self.paths.merge(other.paths)
            self.noise.merge(other.noise)
            for outcome, examples in other.examples.items():
                mine = self.examples[outcome]
                mine.extend(examples[: EXAMPLES_PER_OUTCOME - len(mine)])


def _example(record: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a record a reader drills down to, with large values cut."""
    differences = record.get("differences")
    excerpt = record.get("excerpt")
    if not isinstance(excerpt, str):
        excerpt = None
    elif len(excerpt) > MAX_EXCERPT_CHARS:
        excerpt = excerpt[:MAX_EXCERPT_CHARS] + "\n… (cut)"
    return {
        # Every field bounded, not only the values: a log from elsewhere may hold megabytes,
        # or nesting deeper than JSON output allows, in any of them.
        "id": bounded_value(record.get("id")),
        "ts": bounded_value(record.get("ts")),
        "method": bounded_value(record.get("method")),
        "path": bounded_value(record.get("path")),
        "outcome": record.get("outcome"),
        "primary": _side(record.get("primary")),
        "candidate": _side(record.get("candidate")),
        "secondary": _side(record.get("secondary")),
        "differences": [
            {
                "where": bounded_value(d.get("where")),
                "path": bounded_value(d.get("path")),
                "kind": bounded_value(d.get("kind")),
                "primary": bounded_value(d.get("primary")),
                "candidate": bounded_value(d.get("candidate")),
            }
            for d in (differences if isinstance(differences, list) else [])[:EXAMPLE_DIFFERENCES]
            if isinstance(d, dict)
        ],
        "difference_count": bounded_value(record.get("difference_count")),
        "body_kind": bounded_value(record.get("body_kind")),
        "notes": bounded_value(record.get("notes")),
        "excerpt": excerpt,
    }


def _side(side: Any) -> dict[str, Any] | None:
    if not isinstance(side, dict):
        return None
    keys = ("status", "latency_ms", "bytes", "error", "detail")
    return {key: bounded_value(side.get(key)) for key in keys if key in side}


@dataclass(slots=True)
class InputCounts:
    """What came in besides the exchanges counted; readers add the line-level counts."""

    lines: int = 0
    corrupted: int = 0
    """Lines that are not a JSON object."""
    invalid: int = 0
    """Exchange records without the fields a report needs."""
    other_events: int = 0
    filtered_out: int = 0
    first_corrupted: str | None = None
    """Where the first corrupted line was, for the warning."""
    truncated: list[str] = field(default_factory=list)
    """Compressed logs that end mid-stream (being written or rotated): read up to the cut."""

    def merge(self, other: InputCounts) -> None:
        self.lines += other.lines
        self.corrupted += other.corrupted
        self.invalid += other.invalid
        self.other_events += other.other_events
        self.filtered_out += other.filtered_out
        self.first_corrupted = self.first_corrupted or other.first_corrupted
        self.truncated.extend(other.truncated)


class Aggregator:
    """Bounded running statistics over exchange records; feed it with ``add``."""

    def __init__(self) -> None:
        self.endpoints: dict[str, EndpointStats] = {}
        self.timeseries = TimeSeries()
        self.counts = InputCounts()
        self.first_ts: float | None = None
        self.last_ts: float | None = None

    def add(self, record: Mapping[str, Any]) -> bool:
        """Count one log record; False when it is not a usable exchange (it is counted so)."""
        if record.get("event") != EXCHANGE_EVENT:
            self.counts.other_events += 1
            return False
        # Read and check everything before counting anything, so a bad record leaves no trace.
        try:
            endpoint = record["endpoint"]
            outcome = record["outcome"]
            primary = record["primary"]
            candidate = record["candidate"]
            epoch = parse_ts(record["ts"])
            p_latency = primary["latency_ms"]
            c_latency = candidate["latency_ms"]
            p_status = primary["status"]
            c_status = candidate["status"]
        except (KeyError, TypeError, ValueError, IndexError):
            self.counts.invalid += 1
            return False
        if (
            type(endpoint) is not str
            or outcome not in OUTCOMES
            or type(p_latency) not in _NUMBER_TYPES
            or type(c_latency) not in _NUMBER_TYPES
        ):
            self.counts.invalid += 1
            return False

        stats = self.endpoints.get(endpoint)
        if stats is None:
            stats = self._new_endpoint(endpoint)
        stats.compared += 1
        if self.first_ts is None or epoch < self.first_ts:
            self.first_ts = epoch
        if self.last_ts is None or epoch > self.last_ts:
            self.last_ts = epoch

        if type(p_status) is int and type(c_status) is int:
            # Latencies of exchanges both sides answered, and only those: failures are judged
            # by the error rate, and a ratio over unlike sets would flatter a candidate that
            # fails on the slowest requests (the primary's slowest would be in, its not).
            stats.primary.add(p_latency)
            stats.candidate.add(c_latency)
        if type(p_status) is not int:
            p_status = _status_of(primary)
        if type(c_status) is not int:
            c_status = _status_of(candidate)
        stats.add_status_pair((p_status, c_status))

        if outcome == MATCH:
            stats.matches += 1
            self.timeseries.add(epoch, COMPARED)
        elif outcome == MISMATCH:
            stats.mismatches += 1
            self.timeseries.add(epoch, MISMATCHES)
            self._add_differences(stats, record)
        else:
            stats.candidate_errors += 1
            _count_kind(stats.error_kinds, str(c_status))
            self.timeseries.add(epoch, ERRORS)
            examples = stats.examples[CANDIDATE_ERROR]
            if len(examples) < EXAMPLES_PER_OUTCOME:
                examples.append(_example(record))

        secondary = record.get("secondary")
        if type(secondary) is dict:
            self._add_secondary(stats, secondary)
        noise = record.get("noise")
        if type(noise) is list and noise:
            stats.noise.add_all(noise)
        return True

    def _new_endpoint(self, endpoint: str) -> EndpointStats:
        if len(endpoint) > PATH_VALUE_CHARS:
            endpoint = endpoint[:PATH_VALUE_CHARS] + "…"
            if endpoint in self.endpoints:
                return self.endpoints[endpoint]
        if len(self.endpoints) >= MAX_ENDPOINTS + (OTHER_ENDPOINT in self.endpoints):
            endpoint = OTHER_ENDPOINT
        stats = self.endpoints.get(endpoint)
        if stats is None:
            stats = self.endpoints[endpoint] = EndpointStats()
        return stats

    @staticmethod
    def _add_differences(stats: EndpointStats, record: Mapping[str, Any]) -> None:
        differences = record.get("differences")
        if type(differences) is not list:
            differences = []
        total = record.get("difference_count")
        if type(total) is not int or not len(differences) <= total <= MAX_DIFFERENCE_COUNT:
            # A count from elsewhere may be negative, or past what JSON output can write
            # (orjson stops at 64 bits) once a few are added up.
            total = len(differences)
        stats.difference_count += total
        stats.paths.add_all(differences)
        examples = stats.examples[MISMATCH]
        if len(examples) < EXAMPLES_PER_OUTCOME:
            examples.append(_example(record))

    @staticmethod
    def _add_secondary(stats: EndpointStats, secondary: dict[str, Any]) -> None:
        latency = secondary.get("latency_ms")
        if type(secondary.get("status")) is int and isinstance(latency, int | float):
            if stats.secondary is None:
                stats.secondary = LatencyHistogram()
            stats.secondary.add(latency)
        else:
            stats.secondary_errors += 1

    def merge(self, other: Aggregator) -> None:
        """Add another aggregator's counts, as if its records had been added here after ours."""
        for name, theirs in other.endpoints.items():
            mine = self.endpoints.get(name)
            if mine is None:
                mine = self._new_endpoint(name)
            mine.merge(theirs)
        self.timeseries.merge(other.timeseries)
        self.counts.merge(other.counts)
        for epoch in (other.first_ts, other.last_ts):
            if epoch is not None:
                self.first_ts = epoch if self.first_ts is None else min(self.first_ts, epoch)
                self.last_ts = epoch if self.last_ts is None else max(self.last_ts, epoch)

    @property
    def exchanges(self) -> int:
        return sum(stats.compared for stats in self.endpoints.values())
