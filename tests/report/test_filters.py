import pytest

from shadowproxy.report.filters import RecordFilter, endpoint_matches
from shadowproxy.report.synthetic import DEFAULT_START, exchange_record
from shadowproxy.report.timestamps import format_ts, parse_ts, parse_when


@pytest.mark.parametrize(
    ("pattern", "endpoint", "expected"),
    [
        ("GET /users/{id}", "GET /users/{id}", True),
        ("GET /users/{id}", "GET /users/{id}/orders", False),
        ("GET /users/*", "GET /users/{id}", True),
        ("GET /users/*", "GET /users/{id}/orders", True),  # a shell glob's * spans "/"
        ("*orders*", "POST /orders", True),
        ("/users/**", "DELETE /users/{id}/sessions", True),
        ("GET,POST /orders", "POST /orders", True),
        ("GET,POST /orders", "PUT /orders", False),
        ("/users/{id}", "GET /users/{id}", True),
        ("GET /products", "GET /users/{id}", False),
    ],
)
def test_endpoint_patterns(pattern: str, endpoint: str, expected: bool) -> None:
    assert endpoint_matches(pattern, endpoint) is expected


def test_time_window_is_half_open() -> None:
    keep = RecordFilter(since=DEFAULT_START, until=DEFAULT_START + 10)
    assert keep(exchange_record(ts=DEFAULT_START))
    assert keep(exchange_record(ts=DEFAULT_START + 9.999))
    assert not keep(exchange_record(ts=DEFAULT_START + 10))
    assert not keep(exchange_record(ts=DEFAULT_START - 0.001))
    assert keep({"event": "exchange", "ts": "garbage"})  # for the aggregator to count invalid


def test_parse_ts_forms() -> None:
    assert parse_ts("2026-11-27T18:40:00Z") == DEFAULT_START
    assert parse_ts("2026-11-27T18:40:00.250000Z") == DEFAULT_START + 0.25
    assert parse_ts("2026-11-27T19:40:00+01:00") == DEFAULT_START
    assert parse_ts("2026-11-27T18:40:00") == DEFAULT_START
    assert parse_ts(format_ts(DEFAULT_START + 1.5, micros=True)) == DEFAULT_START + 1.5
    with pytest.raises(ValueError, match="month"):
        parse_ts("2026-13-27T18:40:00Z")


@pytest.mark.parametrize(
    ("text", "seconds_ago"),
    [("30s", 30), ("15m", 900), ("1h", 3600), ("2d", 172_800), ("1w", 604_800), ("1.5h", 5400)],
)
def test_relative_times(text: str, seconds_ago: float) -> None:
    assert parse_when(text, now=DEFAULT_START) == DEFAULT_START - seconds_ago


def test_absolute_and_bad_times() -> None:
    assert parse_when("2026-11-27T18:40:00Z") == DEFAULT_START
    assert parse_when("2026-11-27") == DEFAULT_START - (18 * 3600 + 40 * 60)
    with pytest.raises(ValueError, match="neither an ISO 8601 time"):
        parse_when("last tuesday")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0001-01-01T00:00:00+14:00", "outside the years 1 to 9999"),  # year 0 in UTC
        ("9999-12-31T23:59:59-14:00", "outside the years 1 to 9999"),  # year 10000 in UTC
        ("9999-12-31T23:59:59.9999999Z", "after the year 9999"),  # rounds up into 10000
        ("2026-11-27T18:40:21.1e5Z", "not a fraction"),  # float() would read 10000 s
        ("2026-11-27T18:40:21.1_5Z", "not a fraction"),
        ("2026-11-27T18:40:21.Z", "not a fraction"),
        ("2026-11-27T18:40:21.\u0663Z", "not a fraction"),  # a non-ASCII digit
    ],
)
def test_parse_ts_refuses_what_cannot_be_a_log_time(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_ts(text)


def test_first_and_last_representable_times_round_trip() -> None:
    for text in ("0001-01-01T00:00:00.000Z", "9999-12-31T23:59:59.500Z"):
        assert format_ts(parse_ts(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "100000000d",  # year -271764
        "99999999999999999999w",  # past what a date can hold at all
        "9" * 400 + "s",  # infinite as a float
        "9999-12-31T23:59:59-14:00",  # year 10000 in UTC
        "0001-01-01T00:00:00+00:01",  # year 0 in UTC
    ],
)
def test_times_outside_the_calendar_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="outside the years 1 to 9999"):
        parse_when(text, now=DEFAULT_START)
