"""Structural JSON comparison: types, paths, added and removed members, limits."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from shadowproxy.compare import IDENTICAL, Comparison, Difference, Kind, Where, compare, matching
from shadowproxy.compare.fast import quick_compare

from .support import paths, response, rules


def diff(
    a: object, b: object, content_type: str | None = "application/json", **rule_args: Any
) -> Comparison:
    return compare(response(a, content_type), response(b, content_type), rules(**rule_args))


def test_same_document_is_identical() -> None:
    doc = {"a": [1, 2.5, None, True, "x"], "b": {"c": {}}}
    assert diff(doc, doc) is matching("json")


def test_key_order_and_whitespace_do_not_count() -> None:
    a = b'{"a": 1, "b": [1, 2], "c": {"x": null, "y": "z"}}'
    b = b'{\n  "c": {"y": "z", "x": null},\n  "b": [1,2],\n  "a": 1\n}'
    result = compare(response(a), response(b), rules())
    assert result.matched
    assert result.differences == ()


@pytest.mark.parametrize(
    ("primary", "candidate"),
    [
        (1, 1.0),
        (1, True),
        (0, False),
        (1.0, True),
        (1, "1"),
        (1, None),
        (None, 0),
        ([], {}),
        ({}, None),
    ],
)
def test_different_json_types_are_kind_type(primary: object, candidate: object) -> None:
    result = diff({"v": primary}, {"v": candidate})
    assert result.differences == (Difference(Where.BODY, "/v", Kind.TYPE, primary, candidate),)
    assert result.body_kind == "json"


def test_changed_value() -> None:
    result = diff({"a": {"b": [1, 2, 3]}}, {"a": {"b": [1, 5, 3]}})
    assert result.differences == (Difference(Where.BODY, "/a/b/1", Kind.CHANGED, 2, 5),)


def test_added_and_removed_members() -> None:
    result = diff({"a": 1, "gone": {"x": 1}}, {"a": 1, "new": [1]})
    assert result.differences == (
        Difference(Where.BODY, "/gone", Kind.REMOVED, {"x": 1}, None),
        Difference(Where.BODY, "/new", Kind.ADDED, None, [1]),
    )


def test_array_length_change_reports_extra_indices() -> None:
    assert paths(diff([1, 2, 3, 4], [1, 2])) == {("/2", "removed"), ("/3", "removed")}
    assert paths(diff([1], [1, 2, 3])) == {("/1", "added"), ("/2", "added")}


def test_pointer_escaping_rfc6901() -> None:
    result = diff({"a/b": {"m~n": 1}}, {"a/b": {"m~n": 2}})
    assert result.differences[0].path == "/a~1b/m~0n"


def test_root_type_change_has_empty_path() -> None:
    assert paths(diff([1], {"a": 1})) == {("", "type")}


def test_status_difference() -> None:
    result = compare(response({}, status=200), response({}, status=503), rules())
    assert result.differences == (Difference(Where.STATUS, "", Kind.CHANGED, 200, 503),)


def test_at_most_max_differences_listed_but_all_counted() -> None:
    result = diff(list(range(100)), list(range(1, 101)), max_differences=5)
    assert len(result.differences) == 5
    assert result.total == 100
    assert not result.matched


def test_large_values_are_summarised() -> None:
    big = {"items": [{"n": i} for i in range(500)]}
    result = diff({"x": big}, {"x": None})
    recorded = result.differences[0].primary
    assert recorded["summary"] == "object with 1 keys"
    assert recorded["bytes"] > 1024
    long = "x" * 10_000
    assert len(diff({"s": long}, {"s": "y"}).differences[0].primary) < 600


def test_json_sniffed_when_type_is_missing_or_wrong() -> None:
    assert diff({"a": 1}, {"a": 2}, content_type=None).body_kind == "json"
    assert diff({"a": 1}, {"a": 2}, content_type="text/plain").body_kind == "json"
    assert paths(diff({"a": 1}, {"a": 2}, content_type="application/octet-stream")) == {
        ("/a", "changed")
    }


def test_vendor_json_types() -> None:
    assert diff([1], [2], content_type="application/problem+json").body_kind == "json"
    assert diff([1], [2], content_type="text/json; charset=utf-8").body_kind == "json"


def test_invalid_json_is_compared_as_text_with_a_note() -> None:
    result = compare(response(b'{"a": 1'), response(b'{"a": 2'), rules())
    assert result.body_kind == "text"
    assert "json_invalid" in result.notes
    assert result.total == 1


def test_integers_beyond_64_bits() -> None:
    big = b'{"id": 123456789012345678901234567890}'
    assert compare(response(big), response(big.replace(b"890}", b"891}")), rules()).total == 1
    assert compare(response(big), response(big.replace(b": ", b":")), rules()).matched
    r = rules()
    quick = quick_compare(response(big), response(big.replace(b"890}", b"891}")), r)
    assert quick is not None
    assert quick.total == 1


def test_nesting_deeper_than_the_walk_allows_does_not_raise() -> None:
    deep_a = b"[" * 1000 + b"1" + b"]" * 1000
    deep_b = b"[" * 1000 + b"2" + b"]" * 1000
    result = compare(response(deep_a), response(deep_b), rules())
    assert result.total == 1


def test_fast_path_agrees_with_engine() -> None:
    a = response(b'{"a": 1, "b": 2}')
    b = response(b'{"b": 2,  "a": 1}')
    r = rules()
    assert quick_compare(a, b, r) is matching("json")
    assert compare(a, b, r).matched
    # 1 and 1.0 are equal to Python; the fast path must not call them equal.
    quick = quick_compare(response({"a": 1}), response({"a": 1.0}), r)
    assert quick is not None
    assert quick.total == 1


def test_empty_bodies() -> None:
    assert compare(response(b""), response(b""), rules()) is IDENTICAL
    result = compare(response(b""), response({"a": 1}), rules())
    assert result.total == 1


def test_to_dict_is_json_serialisable() -> None:
    result = diff({"a": 1, "b": [1]}, {"a": "1", "c": None})
    assert orjson.loads(orjson.dumps([d.to_dict() for d in result.differences]))


def test_lone_surrogates_never_reach_the_record() -> None:
    # orjson refuses the escape; the standard library parser accepts it.
    a = response(b'{"k\\udc80": "\\ud800", "list": ["\\ud800"], "n": 1}')
    b = response(b'{"k\\udc80": "x", "list": [1], "n": 2}')
    result = compare(a, b, rules())
    assert result.total == 3
    assert orjson.dumps([d.to_dict() for d in result.differences])


def test_integers_beyond_64_bits_are_compared_exactly_and_recorded_as_digits() -> None:
    big = 2**70
    same = compare(response(b'{"n": %d}' % big), response(b'{"n": %d}' % big), rules())
    assert same is matching("json")
    result = compare(response(b'{"n": %d}' % big), response(b'{"n": %d}' % (big + 1)), rules())
    assert [(d.path, d.kind, d.primary, d.candidate) for d in result.differences] == [
        ("/n", Kind.CHANGED, str(big), str(big + 1))
    ]
    # The log's serialiser stops at 64 bits; a record it cannot write would be lost.
    assert orjson.loads(orjson.dumps([d.to_dict() for d in result.differences]))
