"""The noise model: generalised places, Diffy's thresholds, bounded memory, persistence."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from shadowproxy.compare.model import Comparison, Difference, Kind, Where
from shadowproxy.config import Config, ConfigError, NoiseConfig, parse_config
from shadowproxy.exchange import Failure, FailureKind, Response
from shadowproxy.noise import (
    MAX_PATH_CHARS,
    NoiseModel,
    NoiseStateError,
    generalise,
    gives_evidence,
    state_file,
    without_noise,
    write_state,
)
from shadowproxy.report.aggregate import generalise_path

EP = "GET /users/{id}"
PRIMARY = "http://primary:8080"
CANDIDATE = "http://candidate:8080"


def body(path: str, primary: object = 1, candidate: object = 2) -> Difference:
    return Difference(Where.BODY, path, Kind.CHANGED, primary, candidate)


def header(name: str) -> Difference:
    return Difference(Where.HEADER, name, Kind.CHANGED, "a", "b")


STATUS = Difference(Where.STATUS, "", Kind.CHANGED, 200, 500)


def feed(
    model: NoiseModel,
    *,
    raw: int = 0,
    noise: int = 0,
    total: int,
    path: str = "/ts",
    endpoint: str = EP,
) -> None:
    """``total`` exchanges: the candidate differs at ``path`` in ``raw`` of them, the secondary
    in ``noise`` of them (in different exchanges where possible, it does not matter)."""
    assert raw <= total
    assert noise <= total
    for i in range(total):
        candidate = [body(path)] if i < raw else []
        secondary = [body(path)] if total - i <= noise else []
        model.observe(endpoint, candidate, secondary)


# --- generalisation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/items/3/price", "/items/*/price"),
        ("/a/0/b/12", "/a/*/b/*"),
        ("/0", "/*"),
        ("/x/007", "/x/*"),
        ("/a1/b2", "/a1/b2"),
        ("/items/-", "/items/-"),
        ("/v1.2/3x", "/v1.2/3x"),
        ("", ""),
        ("/", "/"),
    ],
)
def test_generalise_turns_all_digit_segments_into_a_star(path: str, expected: str) -> None:
    assert generalise(path) == expected


def test_generalise_is_the_function_the_report_groups_paths_with() -> None:
    assert generalise is generalise_path


def test_indices_of_one_array_are_one_place() -> None:
    model = NoiseModel()
    model.observe(EP, [], [body("/items/0/ts")])
    real, noise = model.split(EP, [body("/items/7/ts")], [])
    assert (real, noise) == ([], [body("/items/7/ts")])
    assert model.counts(EP, Where.BODY, "/items/*/ts") == model.counts(
        EP, Where.BODY, "/items/2/ts"
    )


def test_a_place_counts_once_per_exchange() -> None:
    model = NoiseModel()
    model.observe(EP, [body("/items/0/ts"), body("/items/1/ts")], [body("/items/4/ts")] * 3)
    counts = model.counts(EP, Where.BODY, "/items/*/ts")
    assert counts is not None
    assert (counts.raw, counts.noise, model.requests(EP)) == (1, 1, 1)


def test_header_names_are_not_generalised() -> None:
    model = NoiseModel()
    model.classify(EP, [], [header("x-1")])
    assert model.counts(EP, Where.HEADER, "x-1") is not None
    assert model.counts(EP, Where.BODY, "x-1") is None


# --- learning and classifying ---------------------------------------------------------------


def test_without_any_noise_every_difference_is_real() -> None:
    model = NoiseModel()
    diffs = [body("/price"), header("x-version"), STATUS]
    assert model.classify(EP, diffs, []) == (diffs, [])


def test_noise_the_current_secondary_shows_applies_to_the_current_exchange() -> None:
    model = NoiseModel()
    ts, price = body("/ts"), body("/price")
    real, noise = model.classify(EP, [ts, price], [body("/ts", 1, 3)])
    assert real == [price]
    assert noise == [ts]


def test_noise_learned_applies_to_the_following_exchanges_at_once() -> None:
    model = NoiseModel()
    model.classify(EP, [], [body("/ts"), header("x-trace-id")])
    # The secondary happens to agree with the primary this time; the place is still noisy.
    real, noise = model.classify(EP, [body("/ts"), header("x-trace-id"), STATUS], [])
    assert real == [STATUS]
    assert noise == [body("/ts"), header("x-trace-id")]


def test_noise_is_per_endpoint() -> None:
    model = NoiseModel()
    model.classify("GET /a", [], [body("/ts")])
    assert model.classify("GET /b", [body("/ts")], []) == ([body("/ts")], [])


def test_split_keeps_the_order_of_the_differences() -> None:
    model = NoiseModel()
    model.observe(EP, [], [body("/a"), body("/c")])
    diffs = [body("/a"), body("/b"), body("/c"), body("/d")]
    real, noise = model.split(EP, diffs, [])
    assert real == [body("/b"), body("/d")]
    assert noise == [body("/a"), body("/c")]


def test_a_failed_secondary_keeps_every_difference_real() -> None:
    model = NoiseModel()
    model.classify(EP, [], [body("/ts")])
    assert model.is_noise(EP, Where.BODY, "/ts")
    real, noise = model.classify(EP, [body("/ts")], None)
    assert (real, noise) == ([body("/ts")], [])
    counts = model.counts(EP, Where.BODY, "/ts")
    assert counts is not None
    # N cannot count the exchange, so neither do R and T: R alone would outweigh N.
    assert (counts.raw, counts.noise, model.requests(EP)) == (0, 1, 1)


def test_noise_is_cancelled_again_once_a_failed_secondary_is_back() -> None:
    model = NoiseModel()
    for _ in range(5):
        model.classify(EP, [body("/ts")], [body("/ts")])
    for _ in range(100):  # the secondary is down
        assert model.classify(EP, [body("/ts")], None) == ([body("/ts")], [])
    assert model.classify(EP, [body("/ts")], [body("/ts")]) == ([], [body("/ts")])


def test_noise_covers_only_differences_of_its_kind() -> None:
    """A secondary whose /ts changes does not hide a candidate that drops /ts."""
    model = NoiseModel()
    model.classify(EP, [], [body("/ts")])
    removed = Difference(Where.BODY, "/ts", Kind.REMOVED, 1, None)
    retyped = Difference(Where.BODY, "/ts", Kind.TYPE, 1, "1")
    real, noise = model.classify(EP, [body("/ts"), removed, retyped], [body("/ts")])
    assert noise == [body("/ts")]
    assert real == [removed, retyped]


@pytest.mark.parametrize(
    ("primary_status", "secondary", "evidence"),
    [
        (200, Response(200, (), b"", 0, 1.0), True),
        (200, Response(503, (), b"", 0, 1.0), False),
        (404, Response(200, (), b"", 0, 1.0), False),
        (200, Failure(FailureKind.TIMEOUT, "slow", 1.0), False),
        (200, None, False),
    ],
)
def test_only_a_secondary_with_the_primarys_status_gives_evidence(
    primary_status: int, secondary: Response | Failure | None, evidence: bool
) -> None:
    primary = Response(primary_status, (), b"", 0, 1.0)
    assert gives_evidence(primary, secondary) is evidence


def test_without_a_secondary_nothing_is_learned_as_noise() -> None:
    model = NoiseModel()
    for _ in range(10):
        assert model.classify(EP, [body("/ts")], None) == ([body("/ts")], [])
    assert model.noisy_places(EP) == []


# --- thresholds -----------------------------------------------------------------------------


def test_a_place_that_differs_much_more_often_on_the_candidate_is_real() -> None:
    model = NoiseModel()
    feed(model, raw=100, noise=2, total=100)
    assert not model.is_noise(EP, Where.BODY, "/ts")
    assert model.split(EP, [body("/ts")], []) == ([body("/ts")], [])


@pytest.mark.parametrize(
    ("raw", "noise", "is_noise"),
    [
        (40, 40, True),  # R == N: not R > N
        (30, 40, True),  # R < N
        (60, 40, True),  # |R-N|/(R+N) = 0.2, not above it
        (61, 40, False),  # 21/101 = 0.208 > 0.2
        (59, 41, True),  # 18/100 = 0.18
    ],
)
def test_relative_threshold(raw: int, noise: int, is_noise: bool) -> None:
    model = NoiseModel(relative=0.2, absolute=0.0003)
    feed(model, raw=raw, noise=noise, total=100)  # |R-N|/T is far above 0.03% throughout
    assert model.is_noise(EP, Where.BODY, "/ts") is is_noise


@pytest.mark.parametrize(
    ("raw", "noise", "is_noise"),
    [
        (4, 1, True),  # |R-N|/T = 3/10000 = 0.03%, not above it
        (5, 1, False),  # 4/10000 = 0.04%
    ],
)
def test_absolute_threshold(raw: int, noise: int, is_noise: bool) -> None:
    model = NoiseModel(relative=0.2, absolute=0.0003)
    feed(model, raw=raw, noise=noise, total=10_000)  # relative is 60% or more: passes
    assert model.is_noise(EP, Where.BODY, "/ts") is is_noise


def test_thresholds_come_from_the_config_and_follow_a_reload() -> None:
    model = NoiseModel.from_config(NoiseConfig(relative=0.5, absolute=0.0))
    feed(model, raw=70, noise=40, total=100)  # 30/110 = 0.27
    assert model.is_noise(EP, Where.BODY, "/ts")
    model.configure(NoiseConfig(relative=0.25, absolute=0.0))
    assert not model.is_noise(EP, Where.BODY, "/ts")
    assert model.requests(EP) == 100  # counts are kept across a reconfiguration


def test_noisy_places_lists_what_is_noise_now() -> None:
    model = NoiseModel()
    model.observe(EP, [body("/price")], [body("/items/3/ts"), header("x-trace-id")])
    places = {(where, path) for where, path, _, _ in model.noisy_places(EP)}
    assert places == {(Where.BODY, "/items/*/ts"), (Where.HEADER, "x-trace-id")}
    assert model.noisy_places("GET /nothing") == []


# --- bounded memory -------------------------------------------------------------------------


def test_endpoints_beyond_the_cap_are_not_tracked_and_stay_real() -> None:
    model = NoiseModel(max_endpoints=2)
    for name in ("GET /a", "GET /b", "GET /c", "GET /d"):
        model.classify(name, [], [body("/ts")])
    assert model.endpoints == ["GET /a", "GET /b"]
    assert model.untracked == 2
    # The secondary differs at the same place, but the endpoint is not tracked: real.
    assert model.classify("GET /c", [body("/ts")], [body("/ts")]) == ([body("/ts")], [])
    assert model.classify("GET /a", [body("/ts")], []) == ([], [body("/ts")])


def test_places_beyond_the_cap_are_not_tracked_and_stay_real() -> None:
    model = NoiseModel(max_paths=3)
    model.observe(EP, [], [body(f"/k{i}") for i in range(10)])
    tracked = [i for i in range(10) if model.counts(EP, Where.BODY, f"/k{i}") is not None]
    assert len(tracked) == 3
    assert model.untracked == 7
    untracked = next(i for i in range(10) if i not in tracked)
    diff = body(f"/k{untracked}")
    assert model.classify(EP, [diff], [diff]) == ([diff], [])


def test_overlong_places_are_not_tracked() -> None:
    model = NoiseModel()
    long_path = "/" + "a" * MAX_PATH_CHARS
    diff = body(long_path)
    assert model.classify(EP, [diff], [diff]) == ([diff], [])
    assert model.counts(EP, Where.BODY, long_path) is None


def test_memory_stays_bounded_under_endless_new_places() -> None:
    model = NoiseModel(max_endpoints=5, max_paths=20)
    for i in range(2000):
        model.observe(f"GET /e{i % 50}", [body(f"/x{i}")], [body(f"/y{i}")])
    assert len(model.endpoints) == 5
    assert all(len(model.noisy_places(name)) <= 20 for name in model.endpoints)


# --- persistence ----------------------------------------------------------------------------


def test_state_round_trips(tmp_path: Path) -> None:
    model = NoiseModel()
    model.classify(EP, [body("/items/1/ts"), body("/price")], [body("/items/2/ts")])
    model.classify(EP, [body("/price"), STATUS], [header("x-trace-id")])
    model.classify("POST /orders", [header("x-a")], [])
    dirty = [model.dirty]
    path = tmp_path / "noise.json"
    model.save(path)
    dirty.append(model.dirty)
    assert dirty == [True, False]
    assert os.listdir(tmp_path) == ["noise.json"]  # no temporary file left behind

    loaded = NoiseModel.load(path)
    assert not loaded.dirty
    assert loaded.endpoints == model.endpoints
    for endpoint in model.endpoints:
        assert loaded.requests(endpoint) == model.requests(endpoint)
        assert loaded.noisy_places(endpoint) == model.noisy_places(endpoint)
    for where, place in [(Where.BODY, "/items/*/ts"), (Where.BODY, "/price"), (Where.STATUS, "")]:
        assert loaded.counts(EP, where, place) == model.counts(EP, where, place)
    assert loaded.split(EP, [body("/items/9/ts")], []) == ([], [body("/items/9/ts")])
    loaded.observe(EP, [body("/price")], [])
    assert loaded.snapshot() != model.snapshot()  # it went on counting


def test_snapshot_is_plain_json(tmp_path: Path) -> None:
    model = NoiseModel()
    model.observe(EP, [body("/a/1")], [body("/a/2")])
    document = orjson.loads(model.snapshot())
    assert document == {
        "format": "shadowproxy-noise",
        "version": 2,
        "endpoints": {EP: {"requests": 1, "places": [["body", "/a/*", "changed", 1, 1]]}},
    }


def test_a_version_1_state_file_is_read_with_its_places_as_changed(tmp_path: Path) -> None:
    path = tmp_path / "noise.json"
    v1 = {"requests": 10, "places": [["body", "/ts", 3, 5]]}
    path.write_bytes(
        orjson.dumps({"format": "shadowproxy-noise", "version": 1, "endpoints": {EP: v1}})
    )
    loaded = NoiseModel.load(path)
    counts = loaded.counts(EP, Where.BODY, "/ts", Kind.CHANGED)
    assert counts is not None
    assert (counts.raw, counts.noise) == (3, 5)
    assert loaded.counts(EP, Where.BODY, "/ts", Kind.REMOVED) is None


def test_load_applies_the_config_and_its_caps(tmp_path: Path) -> None:
    model = NoiseModel()
    for name in ("GET /a", "GET /b", "GET /c"):
        model.observe(name, [], [body(f"/k{i}") for i in range(5)])
    path = tmp_path / "noise.json"
    model.save(path)
    loaded = NoiseModel.load(path, NoiseConfig(max_endpoints=2, max_paths=3, relative=0.4))
    assert loaded.endpoints == ["GET /a", "GET /b"]
    assert len(loaded.noisy_places("GET /a")) == 3
    assert loaded.relative == 0.4


def test_a_missing_state_file_gives_an_empty_model(tmp_path: Path) -> None:
    loaded = NoiseModel.load(tmp_path / "absent.json", NoiseConfig(relative=0.3))
    assert loaded.endpoints == []
    assert loaded.relative == 0.3


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"format": "other", "version": 1, "endpoints": {}}',
        b'{"format": "shadowproxy-noise", "version": 99, "endpoints": {}}',
        b'{"format": "shadowproxy-noise", "version": 1, "endpoints": []}',
        b'{"format": "shadowproxy-noise", "version": 1, "endpoints": {"x": {"requests": -1, '
        b'"places": []}}}',
        b'{"format": "shadowproxy-noise", "version": 1, "endpoints": {"x": {"requests": 1, '
        b'"places": [["nowhere", "/a", 1, 1]]}}}',
        b'{"format": "shadowproxy-noise", "version": 1, "endpoints": {"x": {"requests": 1, '
        b'"places": [["body", "/a", 1]]}}}',
        b'{"format": "shadowproxy-noise", "version": 1, "endpoints": {"x": {}}}',
    ],
)
def test_a_bad_state_file_is_refused_with_its_name(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "noise.json"
    path.write_bytes(content)
    with pytest.raises(NoiseStateError, match=r"noise\.json"):
        NoiseModel.load(path)


def test_an_unwritable_state_file_keeps_the_model_dirty(tmp_path: Path) -> None:
    model = NoiseModel()
    model.observe(EP, [body("/a")], [])
    with pytest.raises(FileNotFoundError):
        model.save(tmp_path / "missing-dir" / "noise.json")
    assert model.dirty


async def test_save_async_writes_the_same_state_from_the_event_loop(tmp_path: Path) -> None:
    model = NoiseModel()
    model.classify(EP, [body("/items/1/ts")], [body("/items/2/ts")])
    path = tmp_path / "noise.json"
    await model.save_async(path)
    assert not model.dirty
    assert path.read_bytes() == model.snapshot()
    assert NoiseModel.load(path).is_noise(EP, Where.BODY, "/items/5/ts")


async def test_save_async_failure_keeps_the_model_dirty(tmp_path: Path) -> None:
    model = NoiseModel()
    model.observe(EP, [body("/a")], [])
    with pytest.raises(FileNotFoundError):
        await model.save_async(tmp_path / "missing-dir" / "noise.json")
    assert model.dirty


def test_write_state_replaces_the_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "noise.json"
    write_state(path, b"old")
    write_state(str(path), b"new")
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["noise.json"]


def test_each_worker_keeps_its_own_state_file() -> None:
    assert state_file("/var/lib/sp/noise.json", None) == "/var/lib/sp/noise.json"
    assert state_file("/var/lib/sp/noise.json", 3) == "/var/lib/sp/noise.json.3"


# --- the comparison without its noise -------------------------------------------------------


def test_without_noise_makes_an_all_noise_exchange_a_match() -> None:
    ts = body("/ts")
    comparison = Comparison(differences=(ts,), total=1, body_kind="json")
    reduced = without_noise(comparison, [], [ts])
    assert reduced.matched
    assert reduced.body_kind == "json"
    assert without_noise(comparison, [ts], []) is comparison


def test_without_noise_counts_unlisted_differences_as_real() -> None:
    ts, price = body("/ts"), body("/price")
    comparison = Comparison(differences=(ts, price), total=10)
    reduced = without_noise(comparison, [price], [ts])
    assert reduced.differences == (price,)
    assert reduced.total == 9


# --- config ---------------------------------------------------------------------------------


def test_noise_config_defaults() -> None:
    config = parse_config({"primary": {"url": PRIMARY}, "candidate": {"url": CANDIDATE}})
    assert config.secondary is None
    assert config.noise == NoiseConfig()
    assert (config.noise.relative, config.noise.absolute) == (0.2, 0.0003)
    assert config.noise.state_path is None


def test_secondary_uses_the_candidate_timeout_default() -> None:
    config = parse_config(
        {
            "primary": {"url": PRIMARY},
            "candidate": {"url": CANDIDATE},
            "secondary": {"url": "http://secondary:8080/"},
            "noise": {"relative": 0.1, "state_path": "/tmp/noise.json"},
        }
    )
    assert config.secondary is not None
    assert config.secondary.url == "http://secondary:8080"
    assert config.secondary.timeout == 5.0
    assert config.noise.relative == 0.1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (PRIMARY, "secondary.url: must differ from primary.url"),
        (CANDIDATE, "secondary.url: must differ from candidate.url"),
    ],
)
def test_secondary_must_be_another_backend(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(
            {
                "primary": {"url": PRIMARY},
                "candidate": {"url": CANDIDATE},
                "secondary": {"url": url},
            }
        )


@pytest.mark.parametrize(
    ("noise", "key"),
    [
        ({"relative": 1.5}, "noise.relative"),
        ({"absolute": -0.1}, "noise.absolute"),
        ({"max_paths": 0}, "noise.max_paths"),
        ({"bogus": 1}, "noise.bogus"),
    ],
)
def test_noise_config_is_validated(noise: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        parse_config({"primary": {"url": PRIMARY}, "candidate": {"url": CANDIDATE}, "noise": noise})


def test_a_reload_keeps_the_state_path_and_names_it() -> None:
    def config(state_path: str, save_interval: float) -> Config:
        noise = {"state_path": state_path, "save_interval": save_interval}
        return parse_config(
            {"primary": {"url": PRIMARY}, "candidate": {"url": CANDIDATE}, "noise": noise}
        )

    running, new = config("/a.json", 60), config("/b.json", 5)
    assert running.restart_only_changes(new) == ["noise.state_path"]
    reloaded = running.reloaded(new)
    assert (reloaded.noise.state_path, reloaded.noise.save_interval) == ("/a.json", 5)
