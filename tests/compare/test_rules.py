"""Rules: merging per endpoint, ignore patterns, unordered arrays, tolerance, null vs missing."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from shadowproxy.compare import Comparison, RuleBook, compare
from shadowproxy.compare.paths import PathMatcher, PathRule, matches
from shadowproxy.config import ConfigError, DiffConfig, EndpointDiffRules, parse_config

from .support import paths, response, rules


def diff(a: object, b: object, endpoint: str = "GET /things/{id}", **rule_args: Any) -> Comparison:
    return compare(response(a), response(b), rules(endpoint, **rule_args))


# --- the rule book ---------------------------------------------------------------------------


def book(**diff: object) -> RuleBook:
    return RuleBook.from_config(DiffConfig.model_validate(diff))


def test_endpoint_rules_extend_lists_and_override_scalars() -> None:
    b = book(
        ignore=["/a"],
        ignore_headers=["x-global"],
        tolerance=0.5,
        endpoints=[
            {"match": "GET /users/{id}", "ignore": ["/b"], "ignore_headers": ["X-Mine"]},
            {"match": "/users/**", "tolerance": "1%", "null_equals_missing": True},
        ],
    )
    r = b.for_endpoint("GET /users/{id}")
    assert {rule.pattern for rule in r.paths.rules} == {"/a", "/b"}
    assert {"x-global", "x-mine"} <= r.ignore_headers
    assert r.tolerance is not None
    assert r.tolerance.relative == pytest.approx(0.01)
    assert r.tolerance.absolute == 0
    assert r.null_equals_missing is True

    other = b.for_endpoint("POST /orders")
    assert [rule.pattern for rule in other.paths.rules] == ["/a"]
    assert other.tolerance is not None
    assert other.tolerance.absolute == 0.5
    assert other.null_equals_missing is False


def test_later_matching_entry_overrides_earlier_scalar() -> None:
    b = book(
        null_equals_missing=True,
        endpoints=[
            {"match": "/api/**", "null_equals_missing": False},
            {"match": "GET /api/special", "null_equals_missing": True},
        ],
    )
    assert b.for_endpoint("GET /api/special").null_equals_missing is True
    assert b.for_endpoint("GET /api/other").null_equals_missing is False
    assert b.for_endpoint("GET /elsewhere").null_equals_missing is True


def test_method_in_the_match_is_respected() -> None:
    b = book(endpoints=[{"match": "POST /users/{id}", "ignore": ["/x"]}])
    assert b.for_endpoint("POST /users/{id}").paths.rules
    assert not b.for_endpoint("GET /users/{id}").paths.rules


def test_rules_are_cached_and_shared() -> None:
    b = book(endpoints=[{"match": "GET /users/{id}", "ignore": ["/x"]}])
    assert b.for_endpoint("GET /a") is b.for_endpoint("GET /b")
    assert b.for_endpoint("GET /users/{id}") is b.for_endpoint("GET /users/{id}")


def test_compiled_rules_pickle() -> None:
    r = book(ignore=["/**/trace_id"], unordered=[{"path": "/items", "key": "id"}]).for_endpoint(
        "GET /x"
    )
    clone = pickle.loads(pickle.dumps(r))
    assert clone == r
    assert clone.paths.start is not None
    assert clone.paths.start.step("a") is not None


def test_bad_endpoint_match_names_the_entry() -> None:
    with pytest.raises(ConfigError, match=r"diff.endpoints\[0\].match: endpoint pattern"):
        parse_config(
            {
                "primary": {"url": "http://a"},
                "candidate": {"url": "http://b"},
                "diff": {"endpoints": [{"match": "GET users"}]},
            }
        )
    entry = EndpointDiffRules.model_construct(match="GET users")  # past validation, somehow
    with pytest.raises(ValueError, match=r"diff.endpoints\[0\].match"):
        RuleBook.from_config(DiffConfig.model_construct(endpoints=[entry]))


# --- ignore patterns ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "keys", "ignored"),
    [
        ("/a", ["a"], True),
        ("/a", ["b"], False),
        ("/a", ["a", "b"], True),  # everything below an ignored place
        ("/items/*/updated_at", ["items", 3, "updated_at"], True),
        ("/items/*/updated_at", ["items", 3, "created_at"], False),
        ("/items/*/updated_at", ["items", "updated_at"], False),
        ("/**/trace_id", ["trace_id"], True),
        ("/**/trace_id", ["a", 1, "b", "trace_id"], True),
        ("/**/trace_id", ["a", "trace_idx"], False),
        ("/a/**/z", ["a", "z"], True),
        ("/a/**/z", ["a", "x", "y", "z"], True),
        ("/a/**/z", ["b", "z"], False),
        ("/a~1b/c~0d", ["a/b", "c~d"], True),
        ("/list/0", ["list", 0], True),
        ("/list/0", ["list", 1], False),
        ("", [], True),
    ],
)
def test_pattern_matching(pattern: str, keys: list[str | int], ignored: bool) -> None:
    state = matches(PathMatcher([PathRule(pattern)]), keys)
    assert (state is not None and state.ignored) is ignored


def test_ignore_in_a_comparison() -> None:
    a = {"items": [{"id": 1, "updated_at": "t1"}], "meta": {"trace_id": "x"}, "trace_id": "y"}
    b = {"items": [{"id": 1, "updated_at": "t2"}], "meta": {"trace_id": "z"}, "trace_id": "w"}
    assert diff(a, b, ignore=["/items/*/updated_at", "/**/trace_id"]).matched
    assert paths(diff(a, b, ignore=["/**/trace_id"])) == {("/items/0/updated_at", "changed")}


def test_ignored_members_may_also_be_added_or_removed() -> None:
    assert diff({"a": 1, "t": 1}, {"a": 1}, ignore=["/t"]).matched
    assert diff([1, 2], [1, 2, 3], ignore=["/*"]).matched


# --- unordered arrays ------------------------------------------------------------------------


def test_unordered_scalars() -> None:
    assert diff({"tags": ["a", "b", "c"]}, {"tags": ["c", "a", "b"]}, unordered=["/tags"]).matched
    result = diff({"tags": ["a", "b", "b"]}, {"tags": ["b", "a", "c"]}, unordered=["/tags"])
    assert paths(result) == {("/tags/2", "changed")}


def test_unordered_by_key_pairs_elements_by_that_member() -> None:
    a = {"items": [{"id": 1, "v": "x"}, {"id": 2, "v": "y"}, {"id": 3, "v": "z"}]}
    b = {"items": [{"id": 3, "v": "z"}, {"id": 4, "v": "n"}, {"id": 1, "v": "CHANGED"}]}
    result = diff(a, b, unordered=[{"path": "/items", "key": "id"}])
    # Paths name the primary's index for matched and removed elements, the candidate's for added.
    assert paths(result) == {
        ("/items/0/v", "changed"),
        ("/items/1", "removed"),
        ("/items/1", "added"),
    }


def test_unordered_by_key_matches_elements_sharing_a_key_as_a_multiset() -> None:
    by_id = [{"path": "/items", "key": "id"}]
    a = {"items": [{"id": 1, "v": "a"}, {"id": 1, "v": "b"}, {"id": 2, "v": "c"}]}
    b = {"items": [{"id": 2, "v": "c"}, {"id": 1, "v": "b"}, {"id": 1, "v": "a"}]}
    assert diff(a, b, unordered=by_id).matched
    changed = {"items": [{"id": 1, "v": "b"}, {"id": 1, "v": "X"}, {"id": 2, "v": "c"}]}
    assert paths(diff(a, changed, unordered=by_id)) == {("/items/0/v", "changed")}
    extra = {"items": [*b["items"], {"id": 1, "v": "d"}]}
    assert paths(diff(a, extra, unordered=by_id)) == {("/items/3", "added")}


def test_unordered_matching_honours_null_equals_missing() -> None:
    a = {"items": [{"id": 1, "note": None}, {"id": 2, "note": None}]}
    b = {"items": [{"id": 2}, {"id": 1}]}
    assert diff(a, b, unordered=["/items"], null_equals_missing=True).matched
    assert not diff(a, b, unordered=["/items"]).matched


def test_unordered_by_key_distinguishes_id_types() -> None:
    a = {"items": [{"id": 1}]}
    b = {"items": [{"id": "1"}]}
    result = diff(a, b, unordered=[{"path": "/items", "key": "id"}])
    assert paths(result) == {("/items/0", "removed"), ("/items/0", "added")}


def test_unordered_elements_with_ignored_members() -> None:
    a = {"items": [{"id": 1, "at": "t1"}, {"id": 2, "at": "t2"}]}
    b = {"items": [{"id": 2, "at": "t9"}, {"id": 1, "at": "t8"}]}
    assert diff(a, b, unordered=["/items"], ignore=["/items/*/at"]).matched


def test_unordered_with_wildcards_and_nesting() -> None:
    a = {"groups": [{"members": [1, 2, 3]}, {"members": [4, 5]}]}
    b = {"groups": [{"members": [3, 2, 1]}, {"members": [5, 4]}]}
    assert diff(a, b, unordered=["/groups/*/members"]).matched
    nested = {"groups": [{"members": [5, 4]}, {"members": [3, 1, 2]}]}
    assert diff(a, nested, unordered=["/groups", "/groups/*/members"]).matched


def test_unordered_leftovers_respect_tolerance() -> None:
    a = {"xs": [1.0, 2.0, 3.0]}
    b = {"xs": [3.0, 2.0, 1.0000001]}
    assert diff(a, b, unordered=["/xs"], tolerance=0.001).matched


def test_large_unordered_arrays_are_linear() -> None:
    n = 50_000  # quadratic matching would take minutes here
    a = {"xs": [{"id": i, "v": i % 7} for i in range(n)]}
    b = {"xs": [{"id": i, "v": i % 7} for i in reversed(range(n))]}
    b["xs"][10]["v"] = -1
    assert paths(diff(a, b, unordered=["/xs"])) == {(f"/xs/{n - 11}/v", "changed")}
    keyed = diff(a, b, unordered=[{"path": "/xs", "key": "id"}])
    assert paths(keyed) == {(f"/xs/{n - 11}/v", "changed")}


# --- tolerance and null_equals_missing -------------------------------------------------------


@pytest.mark.parametrize(
    ("tolerance", "a", "b", "equal"),
    [
        (1e-9, 1.0, 1.0 + 1e-10, True),
        (1e-9, 1.0, 1.0 + 1e-8, False),
        ("0.1%", 1000.0, 1000.9, True),
        ("0.1%", 1000.0, 1001.1, False),
        ("0.1%", 1000, 1001, True),  # integers too
        (0.5, 10, 10.2, False),  # int became float: a type change whatever the tolerance
        ({"absolute": 0.01, "relative": 0.5}, 0.0, 0.005, True),
        # Integers are compared exactly: through floats, ids beyond 2**53 meet their neighbours.
        (1e-9, 1234567890123456789, 1234567890123456788, False),
        (1, 1234567890123456789, 1234567890123456788, True),
    ],
)
def test_numeric_tolerance(tolerance: object, a: float, b: float, equal: bool) -> None:
    assert diff({"n": a}, {"n": b}, tolerance=tolerance).matched is equal


@pytest.mark.parametrize(("b", "equal"), [(b"1001" + b"0" * 397, True), (b"2" + b"0" * 400, False)])
def test_tolerance_on_integers_beyond_a_double(b: bytes, equal: bool) -> None:
    a = b"1" + b"0" * 400
    result = compare(response(b'{"n": %s}' % a), response(b'{"n": %s}' % b), rules(tolerance="1%"))
    assert result.matched is equal


def test_tolerance_never_applies_to_booleans() -> None:
    assert not diff({"b": True}, {"b": False}, tolerance=5).matched


def test_null_equals_missing() -> None:
    a = {"a": 1, "b": None}
    b = {"a": 1, "c": None}
    assert paths(diff(a, b)) == {("/b", "removed"), ("/c", "added")}
    assert diff(a, b, null_equals_missing=True).matched
    assert not diff({"a": None}, {"a": 0}, null_equals_missing=True).matched


def test_null_equals_missing_overridden_per_endpoint() -> None:
    options = {
        "null_equals_missing": True,
        "endpoints": [{"match": "GET /strict", "null_equals_missing": False}],
    }
    assert diff({"a": None}, {}, "GET /loose", **options).matched
    assert not diff({"a": None}, {}, "GET /strict", **options).matched
