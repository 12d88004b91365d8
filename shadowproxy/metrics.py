"""Prometheus metrics: what the proxy did, labelled so dark traffic is told apart."""

from __future__ import annotations

import fcntl
import os
from bisect import bisect_left
from collections.abc import Callable
from pathlib import Path
from typing import Any, overload

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import generate_latest

# Endpoint labels are folded already; this cap keeps a path explosion from exhausting memory.
MAX_ENDPOINT_LABELS = 200
OTHER_ENDPOINT = "other"
# In the multiprocess directory: the endpoints the workers chose together (see EndpointLabels).
ENDPOINT_LABELS_FILE = "endpoint-labels"

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class CountTally:
    """A counter's increments, kept in a plain number until `publish`.

    prometheus-client takes a lock for every increment and, with several workers, also checks
    the process id and writes its memory-mapped file: about a microsecond each, over the
    half-dozen counts of every mirrored request. Published when the log flushes and before
    each scrape, the figures are never behind the log or the page that shows them.
    """

    __slots__ = ("_child", "pending")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.pending = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.pending += amount

    def publish(self) -> None:
        if self.pending:
            self._child.inc(self.pending)
            self.pending = 0.0


class GaugeTally:
    """A gauge's latest value, set on the child at `publish` (see `CountTally`)."""

    __slots__ = ("_child", "_published", "value")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.value = self._published = 0.0

    def set(self, value: float) -> None:
        self.value = value

    def publish(self) -> None:
        if self.value != self._published:
            self._child.set(self.value)
            self._published = self.value


class HistogramTally:
    """A histogram's observations as per-bucket counts and a sum (see `CountTally`).

    Published into the child's own bucket and sum values, as its ``observe`` would have left
    them; a prometheus-client without those falls back to observing one by one.
    """

    __slots__ = ("_bounds", "_buckets", "_child", "_counts", "_direct", "_observed", "_sum")

    def __init__(self, child: Any) -> None:
        self._child = child
        bounds = getattr(child, "_upper_bounds", None)
        self._buckets: Any = getattr(child, "_buckets", None)
        self._sum: Any = getattr(child, "_sum", None)
        self._direct = bounds is None or self._buckets is None or self._sum is None
        self._bounds: list[float] = list(bounds or ())
        self._counts = [0] * len(self._bounds)
        self._observed = 0.0
        """The sum of the values observed since the last publish."""

    def observe(self, value: float) -> None:
        if self._direct:
            self._child.observe(value)
            return
        # The first bucket whose bound is at least the value, as prometheus-client counts it.
        self._counts[bisect_left(self._bounds, value)] += 1
        self._observed += value

    def publish(self) -> None:
        if self._direct or not any(self._counts):
            return
        counts = self._counts
        for i, n in enumerate(counts):
            if n:
                self._buckets[i].inc(n)
                counts[i] = 0
        self._sum.inc(self._observed)
        self._observed = 0.0


class EndpointLabels:
    """The endpoints that get a label of their own: the first `MAX_ENDPOINT_LABELS` seen; the
    others are counted as `OTHER_ENDPOINT`.

    Worker processes choose together, in ``shared`` (a file in the multiprocess directory):
    each choosing its own would put workers times the cap on the page, and more with each
    worker started again. A worker reads the file only for an endpoint it has no label for,
    and not once the file is full, so it reads it about the cap's number of times at most.
    """

    __slots__ = ("_chosen", "_full", "_shared")

    def __init__(self, shared: Path | None = None) -> None:
        self._chosen: set[str] = set()
        self._full = False
        self._shared = shared

    def label(self, endpoint: str) -> str:
        if endpoint in self._chosen:
            return endpoint
        if self._full:
            return OTHER_ENDPOINT
        if self._shared is not None:
            try:
                return self._choose_together(self._shared, endpoint)
            except (OSError, ValueError):  # ValueError: a line cut short by a worker's death
                pass  # choose alone: labels over the cap rather than none
        self._chosen.add(endpoint)
        self._full = len(self._chosen) >= MAX_ENDPOINT_LABELS
        return endpoint

    def _choose_together(self, shared: Path, endpoint: str) -> str:
        with shared.open("a+b") as file:
            fcntl.flock(file, fcntl.LOCK_EX)  # released on close
            file.seek(0)
            # One JSON string a line: an endpoint is the client's path, whatever it holds.
            chosen = [orjson.loads(line) for line in file.read().splitlines()]
            if endpoint not in chosen and len(chosen) < MAX_ENDPOINT_LABELS:
                file.write(orjson.dumps(endpoint) + b"\n")
                chosen.append(endpoint)
        self._chosen.update(chosen)  # those of the other workers too: no read for them
        self._full = len(chosen) >= MAX_ENDPOINT_LABELS
        return endpoint if endpoint in self._chosen else OTHER_ENDPOINT


Tally = CountTally | GaugeTally | HistogramTally
_TALLY_OF: dict[type, Callable[[Any], Tally]] = {
    Counter: CountTally,
    Gauge: GaugeTally,
    Histogram: HistogramTally,
}


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "shadowproxy_requests", "Client requests answered, by status code.", ["status"],
            registry=r,
        )  # fmt: skip
        self.primary_errors = Counter(
            "shadowproxy_primary_errors", "Primary failures answered with 502/504.", ["kind"],
            registry=r,
        )  # fmt: skip
        self.mirrored = Counter(
            "shadowproxy_mirrored", "Requests copied to the candidate.", registry=r
        )
        self.skipped = Counter(
            "shadowproxy_mirror_skipped", "Requests not mirrored, by reason.", ["reason"],
            registry=r,
        )  # fmt: skip
        self.comparisons = Counter(
            "shadowproxy_comparisons", "Compared exchanges by outcome.", ["outcome", "endpoint"],
            registry=r,
        )  # fmt: skip
        self.candidate_errors = Counter(
            "shadowproxy_candidate_errors", "Candidate failures by kind.", ["kind"], registry=r
        )
        self.latency = Histogram(
            "shadowproxy_backend_latency_seconds", "Latency to the last body byte.", ["backend"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.connections = Counter(
            "shadowproxy_backend_connections_opened",
            "Connections opened to each backend; a rate close to the request rate means the "
            "backend does not keep connections alive.",
            ["backend"], registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "shadowproxy_mirrors_in_flight", "Mirrors under way.", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.breaker_open = Gauge(
            "shadowproxy_breaker_open",
            "1 while the circuit breaker pauses mirroring to the candidate, else 0.",
            registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.log_lost = log_lost_counter(r)
        self.websockets = Counter(
            "shadowproxy_websocket_upgrades", "WebSocket upgrades relayed (never mirrored).",
            registry=r,
        )  # fmt: skip
        self.rejected = Counter(
            "shadowproxy_client_rejected",
            "Client requests the proxy answered itself without forwarding, by reason.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.reloads = reloads_counter(r)
        self.captured = Counter(
            "shadowproxy_capture_exchanges",
            "Exchanges captured for replay, by result: written, dropped (buffer full), lost.",
            ["result"], registry=r,
        )  # fmt: skip
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")  # set for workers only
        self._endpoints = EndpointLabels(
            Path(directory) / ENDPOINT_LABELS_FILE if directory else None
        )
        self._tallies: dict[tuple[object, tuple[str, ...]], Tally] = {}

    @overload
    def labelled(self, metric: Counter, *values: str) -> CountTally: ...
    @overload
    def labelled(self, metric: Gauge, *values: str) -> GaugeTally: ...
    @overload
    def labelled(self, metric: Histogram, *values: str) -> HistogramTally: ...

    def labelled(self, metric: Counter | Gauge | Histogram, *values: str) -> Tally:
        """The tally of ``metric.labels(*values)`` (the metric itself without labels), kept
        for the next time: what the hot paths count, published in one step (`publish`).

        prometheus-client takes a lock and checks every value on each ``labels`` call, several
        times the cost of the increment. Label values are bounded where they are chosen
        (status codes, reasons, capped endpoints).
        """
        key = (metric, values)
        tally = self._tallies.get(key)
        if tally is None:
            child = metric.labels(*values) if values else metric
            tally = self._tallies[key] = _TALLY_OF[type(metric)](child)
        return tally

    def publish(self) -> None:
        """Hand what the tallies hold to prometheus-client, where scrapes read it."""
        for tally in self._tallies.values():
            tally.publish()

    def endpoint_label(self, endpoint: str) -> str:
        return self._endpoints.label(endpoint)

    def render(self) -> bytes:
        self.publish()
        return generate_latest(self.registry)


def log_lost_counter(registry: CollectorRegistry | None = None) -> Counter:
    """Records the log could not write. The supervisor keeps one of its own for the lines it
    passes on (relay.py); with workers, every process's count adds up on /metrics."""
    return Counter(
        "shadowproxy_log_records_lost",
        "Records the log could not write.",
        registry=registry if registry is not None else CollectorRegistry(),
    )


def reloads_counter(registry: CollectorRegistry) -> Counter:
    """Config reloads by result. With workers only the supervisor counts them: it reads and
    judges the file once for all, and a refused file never reaches a worker."""
    counter = Counter(
        "shadowproxy_config_reloads", "Config reloads by result.", ["result"], registry=registry
    )
    for result in ("ok", "invalid"):
        counter.labels(result)  # at 0 from the start: an alert on failures needs a series
    return counter


def forget_process(pid: int) -> None:
    """Drop a dead worker's live gauges (in flight, breaker open) from the multiprocess
    directory; its counters stay in the sums."""
    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class SupervisorMetrics:
    """What only the supervisor knows: its workers' lives. Written, like the workers' own, to
    the shared multiprocess directory, so /metrics shows them beside the sums."""

    def __init__(self) -> None:
        r = CollectorRegistry()  # collected from the directory, never from here
        self.serving = Gauge(
            "shadowproxy_workers_serving", "Worker processes taking requests now.",
            registry=r, multiprocess_mode="max",
        )  # fmt: skip
        self.exits = Counter(
            "shadowproxy_worker_exits",
            "Worker processes that died while the proxy ran; each is started again.",
            registry=r,
        )
        self.log_lost = log_lost_counter(r)
        self.reloads = reloads_counter(r)


def render_all_workers() -> bytes:
    """Metrics summed over every worker process, read from the shared multiprocess directory.

    Worker processes write their values there once ``PROMETHEUS_MULTIPROC_DIR`` is set before
    prometheus-client is imported; the supervisor serves the sum.
    """
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)
