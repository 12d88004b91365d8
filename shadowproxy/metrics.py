"""Prometheus metrics: what the proxy did, labelled so dark traffic is told apart."""

from __future__ import annotations

from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import generate_latest

Labelled = TypeVar("Labelled", Counter, Gauge, Histogram)

# Endpoint labels are folded already; this cap keeps a path explosion from exhausting memory.
MAX_ENDPOINT_LABELS = 200
OTHER_ENDPOINT = "other"

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


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
        self.log_lost = Counter(
            "shadowproxy_log_records_lost", "Records the log could not write.", registry=r
        )
        self.websockets = Counter(
            "shadowproxy_websocket_upgrades", "WebSocket upgrades relayed (never mirrored).",
            registry=r,
        )  # fmt: skip
        self.rejected = Counter(
            "shadowproxy_client_rejected",
            "Client requests the proxy answered itself without forwarding, by reason.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.reloads = Counter(
            "shadowproxy_config_reloads", "Config reloads by result.", ["result"], registry=r
        )
        self.captured = Counter(
            "shadowproxy_capture_exchanges",
            "Exchanges captured for replay, by result: written, dropped (buffer full), lost.",
            ["result"], registry=r,
        )  # fmt: skip
        self._endpoints: set[str] = set()
        self._children: dict[tuple[object, tuple[str, ...]], object] = {}

    def labelled(self, metric: Labelled, *values: str) -> Labelled:
        """``metric.labels(*values)``, kept for the next time.

        prometheus-client takes a lock and checks every value on each ``labels`` call, several
        times the cost of the increment; the hot paths count several times per request. Label
        values are bounded where they are chosen (status codes, reasons, capped endpoints).
        """
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child  # type: ignore[return-value]

    def endpoint_label(self, endpoint: str) -> str:
        if endpoint in self._endpoints:
            return endpoint
        if len(self._endpoints) >= MAX_ENDPOINT_LABELS:
            return OTHER_ENDPOINT
        self._endpoints.add(endpoint)
        return endpoint

    def render(self) -> bytes:
        return generate_latest(self.registry)


def render_all_workers() -> bytes:
    """Metrics summed over every worker process, read from the shared multiprocess directory.

    Worker processes write their values there once ``PROMETHEUS_MULTIPROC_DIR`` is set before
    prometheus-client is imported; the supervisor serves the sum.
    """
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)
