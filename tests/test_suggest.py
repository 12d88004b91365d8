"""``suggest-ignores``: ignore rules for noisy places, proposed from a discrepancy log."""

from __future__ import annotations

import gzip
import random
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from shadowproxy.cli import main
from shadowproxy.compare import RuleBook, compare
from shadowproxy.config import parse_config
from shadowproxy.exchange import Response
from shadowproxy.report.synthetic import difference, exchange_record
from shadowproxy.suggest import Collector, Thresholds, quote, render, shape

USERS = "GET /users/{id}"
ORDERS = "GET /orders/{id}"
COMMAND_TIMEOUT = 30
BASE = datetime(2026, 11, 27, 19, 0, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def noisy_users_log(rng: random.Random, count: int = 200) -> list[dict[str, Any]]:
    """Every record differs at a UUID, at timestamps in an array and at a trace header; 30%
    also differ at /status, with two values; a few candidate errors besides."""
    records = []
    for i in range(count):
        now = BASE + timedelta(seconds=i, milliseconds=rng.randrange(1000))
        later = now + timedelta(milliseconds=rng.randrange(1, 900))
        diffs = [
            difference("/request_id", str(uuid.UUID(int=rng.getrandbits(128))), str(uuid.uuid4())),
            difference("/items/0/fetched_at", iso(now), iso(later)),
            difference("/items/1/fetched_at", iso(now), iso(later)),
            difference(
                "x-trace-id", f"{rng.getrandbits(128):032x}", f"{rng.getrandbits(128):032x}",
                where="header",
            ),
        ]  # fmt: skip
        if i % 10 < 3:
            diffs.append(difference("/status", "active", "inactive"))
        records.append(
            exchange_record(
                endpoint=USERS, outcome="mismatch", path=f"/users/{i}", differences=diffs
            )
        )
        if i % 50 == 0:
            records.append(
                exchange_record(
                    endpoint=USERS, outcome="candidate_error", error="timeout", path=f"/users/{i}"
                )
            )
    return records


def write(path: Path, records: list[dict[str, Any]], *, extra: bytes = b"") -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records) + extra)
    return path


def suggest(records: list[dict[str, Any]], **thresholds: Any) -> str:
    collector = Collector()
    for record in records:
        collector.add(record)
    return render(collector, Thresholds(**thresholds), ["test.log"])


def parsed(text: str) -> Any:
    return yaml.safe_load(text)


def config_with(endpoints: Any) -> Any:
    return parse_config(
        {
            "primary": {"url": "http://primary:8080"},
            "candidate": {"url": "http://candidate:8080"},
            "diff": {"endpoints": endpoints},
        }
    )


# --- value shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0f8fad5b-d9cb-469f-a165-70867728950e", "uuid:lower"),
        ("0F8FAD5B-D9CB-469F-A165-70867728950E", "uuid:upper"),
        ("2026-11-27T19:19:21.517Z", "timestamp:9-9-9T9:9:9.9Z"),
        ("2026-11-27 19:19:21+00:00", "timestamp:9-9-9 9:9:9+9:9"),
        ("2026-11-27", "timestamp:9-9-9"),
        ("Fri, 27 Nov 2026 19:19:21 GMT", "http-date"),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "traceparent"),
        ("01ARZ3NDEKTSV4RRFFQ69G5FAV", "ulid"),
        ("4bf92f3577b34da6a3ce929d0e0e4736", "hex:32"),
        ("1795804800", "epoch-text:10"),
        (1_795_804_800, "epoch:s"),
        (1_795_804_800_123, "epoch:ms"),
        (1_795_804_800.25, "epoch:s"),
        ("active", None),
        ("abc123", None),
        (42, None),
        (19.99, None),
        (True, None),
        (None, None),
        ({"a": 1}, None),
    ],
)
def test_shape(value: Any, expected: str | None) -> None:
    assert shape(value) == expected


def test_quote_keeps_any_text_on_one_line() -> None:
    for text in ["GET /users/{id}", 'a "b"\nc', "x\u2028y\x85z", "é😀", "#: -"]:
        quoted = quote(text)
        assert "\n" not in quoted
        assert yaml.safe_load(quoted) == text


# --- what is proposed -----------------------------------------------------------------------


def test_proposes_exactly_the_uuid_and_time_places_and_the_trace_header() -> None:
    text = suggest(noisy_users_log(random.Random(1)))
    assert parsed(text) == [
        {
            "match": USERS,
            "ignore": ["/items/*/fetched_at", "/request_id"],
            "ignore_headers": ["x-trace-id"],
        }
    ]
    # The evidence is there, as comments.
    assert "differed in 200 of 200 compared exchanges (100%); uuid values" in text
    assert "timestamp values" in text
    assert "long hex values" in text
    assert "e.g. primary " in text


def test_the_proposal_is_a_valid_config_that_ignores_the_noise() -> None:
    rules = parsed(suggest(noisy_users_log(random.Random(2))))
    config = config_with(rules)
    assert config.diff.endpoints[0].ignore == ["/items/*/fetched_at", "/request_id"]
    compiled = RuleBook.from_config(config.effective_diff()).for_endpoint(USERS)

    def response(request_id: str, fetched: str, status: str, trace: str) -> Response:
        body = orjson.dumps(
            {"request_id": request_id, "status": status, "items": [{"fetched_at": fetched}] * 2}
        )
        headers = (("content-type", "application/json"), ("x-trace-id", trace))
        return Response(status=200, headers=headers, body=body, size=len(body), latency_ms=1.0)

    primary = response(str(uuid.uuid4()), "2026-11-27T19:00:00.000Z", "active", "ab" * 16)
    candidate = response(str(uuid.uuid4()), "2026-11-27T19:00:00.300Z", "inactive", "cd" * 16)
    comparison = compare(primary, candidate, compiled)
    assert [d.path for d in comparison.differences] == ["/status"]


def test_rules_merge_into_a_config_with_other_entries() -> None:
    rules = parsed(suggest(noisy_users_log(random.Random(3))))
    config = config_with([{"match": "/search/**", "ignore": ["/took_ms"]}, *rules])
    assert [entry.match for entry in config.diff.endpoints] == ["/search/**", USERS]


def test_the_thresholds_are_options() -> None:
    records = noisy_users_log(random.Random(4), count=30)
    assert parsed(suggest(records, min_samples=31)) is None
    assert parsed(suggest(records, min_samples=30)) is not None
    # /status differs in 30% with two values: it never looks generated, whatever the share.
    proposed = parsed(suggest(records, min_share=0.2))
    assert "/status" not in proposed[0]["ignore"]


def test_few_samples_propose_nothing_and_say_so() -> None:
    text = suggest(noisy_users_log(random.Random(5), count=10))
    assert parsed(text) is None
    assert "Nothing to suggest" in text
    assert "at least 20" in text


def orders_log(rng: random.Random) -> list[dict[str, Any]]:
    """Places that differ in every exchange but are real regressions."""
    owners = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(20)]
    records = []
    for i in range(200):
        now = BASE + timedelta(seconds=i)
        diffs = [
            # A price computed differently: distinct numbers, no generated shape.
            difference("/total", round(rng.uniform(1, 500), 2), round(rng.uniform(1, 500), 2)),
            # A date format that changed: a timestamp on both sides, not the same format.
            difference("/created_at", iso(now), now.isoformat(sep=" ")),
            # A UUID the candidate gets wrong: stable for repeated identical requests.
            difference("/owner", owners[i % 20], str(uuid.uuid4())),
            # A member the candidate dropped, with values that look generated.
            difference("/etag", str(uuid.uuid4()), None, kind="removed"),
            # A name the candidate spells differently: distinct strings, but few of them.
            difference("/city", ["Oslo", "Lima"][i % 2], ["oslo", "lima"][i % 2]),
        ]
        records.append(
            exchange_record(
                endpoint=ORDERS, outcome="mismatch", path=f"/orders/{i % 20}", differences=diffs
            )
        )
    return records


def test_real_regressions_that_differ_everywhere_are_not_proposed() -> None:
    text = suggest(orders_log(random.Random(6)))
    assert parsed(text) is None, text


def ids_log(
    candidate_value: Any, *, every: int = 0, odd: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """200 exchanges differing at /token (a UUID each side); every ``every``-th exchange
    differs there as ``odd`` says instead."""
    rng = random.Random(9)
    records = []
    for i in range(200):
        primary = str(uuid.UUID(int=rng.getrandbits(128)))
        diff = difference("/token", primary, candidate_value(rng))
        if every and i % every == 0 and odd is not None:
            diff = difference("/token", primary, odd.get("candidate"), kind=odd["kind"])
        records.append(
            exchange_record(
                endpoint=USERS, outcome="mismatch", path=f"/users/{i}", differences=[diff]
            )
        )
    return records


def random_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128)))


def test_generated_values_are_proposed() -> None:
    assert parsed(suggest(ids_log(random_uuid))) == [{"match": USERS, "ignore": ["/token"]}]


@pytest.mark.parametrize(
    "odd",
    [
        {"kind": "removed", "candidate": None},  # dropped now and then: a regression
        {"kind": "type", "candidate": 7},
        {"kind": "changed", "candidate": "2026-11-27T19:00:00Z"},  # a changed format
    ],
)
def test_a_place_that_is_ever_structural_or_changes_format_is_never_proposed(
    odd: dict[str, Any],
) -> None:
    """One exchange in ten is well below min_share, and still enough: it is real."""
    assert parsed(suggest(ids_log(random_uuid, every=10, odd=odd))) is None


def test_a_candidate_answering_a_constant_is_not_noise() -> None:
    """The primary generates a UUID per request; the candidate always says the same one."""
    constant = "0f8fad5b-d9cb-469f-a165-70867728950e"
    assert parsed(suggest(ids_log(lambda _: constant))) is None


def test_a_primary_answering_a_constant_is_not_noise() -> None:
    """The primary says the same creation time for every user; the candidate stamps each
    answer with the time: the field's meaning changed, two primaries would agree."""
    records = [
        exchange_record(
            endpoint=USERS,
            outcome="mismatch",
            path=f"/users/{i}",
            differences=[difference("/created_at", iso(BASE), iso(BASE + timedelta(seconds=i)))],
        )
        for i in range(1, 201)
    ]
    assert parsed(suggest(records)) is None


def test_values_that_vary_only_after_a_burst_are_still_noise() -> None:
    """The first hundred exchanges fall in one second: both sides show one timestamp each;
    later ones vary. The candidate varies as much as the primary: noise."""
    records = []
    for i in range(300):
        second = 0 if i < 100 else i
        primary = iso(BASE + timedelta(seconds=second))
        candidate = iso(BASE + timedelta(seconds=second + 2))
        records.append(
            exchange_record(
                endpoint=USERS,
                outcome="mismatch",
                path=f"/users/{i}",
                differences=[difference("/fetched_at", primary, candidate)],
            )
        )
    assert parsed(suggest(records)) == [{"match": USERS, "ignore": ["/fetched_at"]}]


def test_a_float_epoch_that_happens_to_be_whole_is_still_the_same_field() -> None:
    """The engine reports 1795804800.5 against 1795804801 as a type change; for a number that
    is the same field, not a structural change."""
    records = []
    for i in range(200):
        primary = 1_795_804_800 + i + 0.25
        candidate: float = 1_795_804_801 + i + 0.5
        kind = "changed"
        if i % 20 == 0:
            candidate, kind = 1_795_804_802 + i, "type"  # whole: an int in JSON
        records.append(
            exchange_record(
                endpoint=USERS,
                outcome="mismatch",
                path=f"/users/{i}",
                differences=[difference("/at", primary, candidate, kind=kind)],
            )
        )
    assert parsed(suggest(records)) == [{"match": USERS, "ignore": ["/at"]}]


def test_a_match_that_covers_other_logged_endpoints_says_so() -> None:
    records = [
        *ids_log(random_uuid),
        exchange_record(endpoint="GET /users/search", outcome="match", path="/users/search"),
    ]
    text = suggest(records)
    assert "# this match also covers GET /users/search: narrow it if they differ" in text
    assert parsed(text) == [{"match": USERS, "ignore": ["/token"]}]


def test_an_endpoint_no_rule_can_name_is_not_proposed() -> None:
    records = [
        {**record, "endpoint": "OPTIONS *", "method": "OPTIONS", "path": "*"}
        for record in ids_log(random_uuid)
    ]
    assert parsed(suggest(records)) is None


def test_distinct_strings_without_a_known_shape_are_proposed() -> None:
    rng = random.Random(7)
    records = [
        exchange_record(
            endpoint=ORDERS,
            outcome="mismatch",
            path=f"/orders/{i}",
            differences=[
                difference("/nonce", f"n{rng.getrandbits(40)}", f"n{rng.getrandbits(40)}")
            ],
        )
        for i in range(40)
    ]
    text = suggest(records)
    assert parsed(text) == [{"match": ORDERS, "ignore": ["/nonce"]}]
    assert "distinct string values, 40 distinct among the first 40" in text


def test_differences_already_logged_as_noise_count_too() -> None:
    records = [
        exchange_record(
            endpoint=USERS,
            outcome="match",
            path=f"/users/{i}",
            noise=[difference("/id", str(uuid.uuid4()), str(uuid.uuid4()))],
            secondary={"status": 200, "latency_ms": 2.0, "bytes": 10, "error": None},
        )
        for i in range(25)
    ]
    text = suggest(records)
    assert parsed(text) == [{"match": USERS, "ignore": ["/id"]}]
    assert "25 already logged as noise" in text


def test_status_and_whole_body_differences_are_never_proposed() -> None:
    records = [
        exchange_record(
            endpoint=USERS,
            outcome="mismatch",
            path=f"/users/{i}",
            differences=[
                difference("", 200, 500, where="status"),
                difference("", {"lines": 3}, {"lines": 4}, where="body"),
            ],
        )
        for i in range(30)
    ]
    assert parsed(suggest(records)) is None


def test_odd_records_are_skipped_without_an_error() -> None:
    collector = Collector()
    odd: list[dict[str, Any]] = [
        {"event": "config_reloaded"},
        {"event": "exchange"},
        {"event": "exchange", "endpoint": USERS, "outcome": "mismatch", "differences": 3},
        {
            "event": "exchange",
            "endpoint": USERS,
            "outcome": "mismatch",
            "differences": [1, {"where": "body"}, {"where": "body", "path": 5}, {"path": "/a"}],
            "noise": "x",
        },
    ]
    for record in odd:
        collector.add(record)
    assert collector.counts.other_events == 1
    assert collector.counts.invalid == 1
    assert render(collector, Thresholds(), ["x"]).startswith("# shadowproxy suggest-ignores")


def test_memory_stays_bounded() -> None:
    from shadowproxy import suggest as module

    collector = Collector()
    for i in range(module.MAX_ENDPOINTS + 10):
        collector.add(exchange_record(endpoint=f"GET /e{i}", outcome="match"))
    diffs = [difference(f"/k{i}", str(uuid.uuid4()), str(uuid.uuid4())) for i in range(300)]
    for _ in range(module.VALUE_SAMPLE + 10):
        collector.add(exchange_record(endpoint="GET /e0", outcome="mismatch", differences=diffs))
    assert len(collector.endpoints) == module.MAX_ENDPOINTS
    places = collector.endpoints["GET /e0"].places
    assert len(places) == module.MAX_PLACES
    assert all(p.sampled <= module.VALUE_SAMPLE for p in places.values())
    assert all(len(p.requests) <= module.REPEAT_SAMPLE for p in places.values())


# --- the command ----------------------------------------------------------------------------


def test_command_reads_files_globs_and_gzip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = noisy_users_log(random.Random(8))
    write(tmp_path / "a.log", records[:100])
    with gzip.open(tmp_path / "b.log.gz", "wb") as file:
        file.write(b"".join(orjson.dumps(r) + b"\n" for r in records[100:]))
    assert main(["suggest-ignores", str(tmp_path / "a.log"), str(tmp_path / "*.gz")]) == 0
    out = capsys.readouterr().out
    assert parsed(out)[0]["ignore"] == ["/items/*/fetched_at", "/request_id"]
    assert "differed in 200 of 200" in out


def test_command_filters_endpoints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write(tmp_path / "a.log", noisy_users_log(random.Random(9)))
    assert main(["suggest-ignores", str(log), "--endpoint", "GET /orders/*"]) == 0
    out = capsys.readouterr().out
    assert parsed(out) is None
    assert "Nothing to suggest" in out


def test_command_warns_about_corrupted_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write(tmp_path / "a.log", noisy_users_log(random.Random(10)), extra=b"{half\n")
    assert main(["suggest-ignores", str(log)]) == 0
    captured = capsys.readouterr()
    assert parsed(captured.out)[0]["match"] == USERS
    assert "skipped 1 line(s)" in captured.err


def test_command_warns_about_a_cut_gzip_log_and_uses_what_was_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole = write(tmp_path / "a.log", noisy_users_log(random.Random(11), count=400))
    cut = tmp_path / "rotating.log.gz"
    cut.write_bytes(gzip.compress(whole.read_bytes())[:-300])
    assert main(["suggest-ignores", str(cut)]) == 0
    captured = capsys.readouterr()
    assert parsed(captured.out)[0]["match"] == USERS
    assert f"warning: {cut}: the compressed data ends early" in captured.err


def test_command_with_nothing_to_suggest_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write(tmp_path / "a.log", [])
    assert main(["suggest-ignores", str(log)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# ")
    assert parsed(out) is None


@pytest.mark.parametrize(
    "argv",
    [
        ["suggest-ignores", "/nonexistent/x.log"],
        ["suggest-ignores", "/nonexistent/*.log"],
    ],
)
def test_unreadable_input_exits_2_without_a_traceback(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("shadowproxy suggest-ignores: error: /nonexistent")
    assert "Traceback" not in err


def test_a_directory_is_unreadable_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["suggest-ignores", str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--min-share", "0"], ["--min-samples", "x"], ["--since", "?"]])
def test_bad_options_exit_2(tmp_path: Path, option: list[str]) -> None:
    log = write(tmp_path / "a.log", [])
    with pytest.raises(SystemExit) as raised:
        main(["suggest-ignores", str(log), *option])
    assert raised.value.code == 2


def test_python_dash_m_shadowproxy_suggest_ignores(tmp_path: Path) -> None:
    log = write(tmp_path / "discrepancies.log", noisy_users_log(random.Random(11)))
    result = subprocess.run(
        [sys.executable, "-m", "shadowproxy", "suggest-ignores", str(log)],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert parsed(result.stdout) == [
        {
            "match": USERS,
            "ignore": ["/items/*/fetched_at", "/request_id"],
            "ignore_headers": ["x-trace-id"],
        }
    ]
    config = config_with(parsed(result.stdout))
    assert config.diff.endpoints[0].ignore_headers == ["x-trace-id"]


def test_python_dash_m_reads_stdin_and_fails_cleanly() -> None:
    records = noisy_users_log(random.Random(12), count=30)
    result = subprocess.run(
        [sys.executable, "-m", "shadowproxy", "suggest-ignores", "-"],
        input=b"".join(orjson.dumps(r) + b"\n" for r in records),
        capture_output=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert b"in: stdin" in result.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "shadowproxy", "suggest-ignores", "/nonexistent.log"],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr
