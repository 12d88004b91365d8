"""Tallies publish exactly what prometheus-client would have counted, when asked."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from shadowproxy.config import LogConfig
from shadowproxy.metrics import (
    LATENCY_BUCKETS,
    MAX_ENDPOINT_LABELS,
    OTHER_ENDPOINT,
    EndpointLabels,
    Metrics,
)
from shadowproxy.record import LogWriter

# Bounds themselves, values between them, and values beyond the last.
latencies = st.one_of(
    st.sampled_from(LATENCY_BUCKETS),
    st.floats(min_value=0, max_value=60, allow_nan=False),
)


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample but the creation times, which differ between two registries."""
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


@given(
    st.lists(latencies, max_size=50),
    st.lists(st.sampled_from(["200", "404", "502"]), max_size=30),
    st.lists(st.integers(min_value=0, max_value=64), max_size=10),
)
def test_tallies_publish_what_direct_counting_gives(
    seconds: list[float], statuses: list[str], in_flight: list[int]
) -> None:
    tallied, direct = Metrics(), Metrics()
    for value in seconds:
        tallied.labelled(tallied.latency, "candidate").observe(value)
        direct.latency.labels("candidate").observe(value)
    for status in statuses:
        tallied.labelled(tallied.requests, status).inc()
        direct.requests.labels(status).inc()
        tallied.labelled(tallied.mirrored).inc()
        direct.mirrored.inc()
    for n in in_flight:
        tallied.labelled(tallied.in_flight).set(n)
        direct.in_flight.set(n)
    assert samples(tallied) == samples(direct)
    tallied.publish()  # publishing again adds nothing
    assert samples(tallied) == samples(direct)


def test_a_flush_of_the_log_publishes_even_with_no_record_to_write(tmp_path: Path) -> None:
    metrics = Metrics()
    writer = LogWriter(LogConfig(path=str(tmp_path / "log.jsonl")), before_flush=metrics.publish)
    metrics.labelled(metrics.mirrored).inc(3)
    assert metrics.mirrored._value.get() == 0  # counted, not yet published
    writer.flush()
    assert metrics.mirrored._value.get() == 3


def test_endpoint_labels_chosen_together_stop_at_the_cap_for_all(tmp_path: Path) -> None:
    shared = tmp_path / "endpoint-labels"
    one, two = EndpointLabels(shared), EndpointLabels(shared)
    for i in range(MAX_ENDPOINT_LABELS - 1):
        assert one.label(f"GET /a{i}") == f"GET /a{i}"
    assert two.label("GET /b") == "GET /b"  # the last free label
    assert two.label("GET /a0") == "GET /a0"  # chosen by the other
    assert one.label("GET /c") == OTHER_ENDPOINT
    assert EndpointLabels(shared).label("GET /d") == OTHER_ENDPOINT  # a worker started again
    assert EndpointLabels(shared).label("GET /b") == "GET /b"
