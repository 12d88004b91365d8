"""Property tests: the JSON diff agrees with DeepDiff, and nothing a backend sends breaks it.

Agreement is defined on the set of (JSON Pointer, kind) pairs. DeepDiff is run with the
options that make its semantics the ones this engine documents:

* ``zip_ordered_iterables=True``: arrays compared index by index, extra indices reported as
  added or removed (by default DeepDiff aligns lists with difflib instead);
* ``threshold_to_diff_deeper=0``: always report member by member (by default DeepDiff reports
  a whole object as changed when most of its keys differ);
* ``ignore_private_variables=False``: keys such as ``"__x"`` are data like any other.

Its report kinds map to ours: values_changed -> changed, type_changes -> type (DeepDiff also
treats ``1`` vs ``1.0`` and ``1`` vs ``true`` as type changes), dictionary_item_added and
iterable_item_added -> added, dictionary_item_removed and iterable_item_removed -> removed.
"""

from __future__ import annotations

import gzip
import random
from typing import Any

import brotli
import orjson
import zstandard
from deepdiff import DeepDiff
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowproxy.compare import Comparison, compare
from shadowproxy.compare.fast import quick_compare
from shadowproxy.compare.pointer import to_pointer

from .support import paths, response, rules

DEEPDIFF_KINDS = {
    "values_changed": "changed",
    "type_changes": "type",
    "dictionary_item_added": "added",
    "iterable_item_added": "added",
    "dictionary_item_removed": "removed",
    "iterable_item_removed": "removed",
}
UNLIMITED = rules(max_differences=1_000_000)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0, 1, 0.0, 1.0, -0.0, True, False, "", "1"])  # the classic confusions
    | st.text(max_size=6)
)
keys = st.text(max_size=4) | st.sampled_from(["a", "b", "a/b", "m~n", "__x", "~1"])
documents = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=5),
    max_leaves=30,
)


@st.composite
def mutated(draw: st.DrawFn, value: Any) -> Any:
    """A variant of ``value``: some members changed, added, removed or retyped."""
    if draw(st.integers(0, 9)) == 0:
        return draw(documents)
    if isinstance(value, dict):
        result = {}
        for key, member in value.items():
            action = draw(st.sampled_from(["mutate", "keep", "remove"]))
            if action != "remove":
                result[key] = draw(mutated(member)) if action == "mutate" else member
        for key in draw(st.lists(keys, max_size=2)):
            result.setdefault(key, draw(scalars))
        return result
    if isinstance(value, list):
        items: list[Any] = []
        for item in value:
            change: bool = draw(st.booleans())
            items.append(draw(mutated(item)) if change else item)
        cut: bool = draw(st.booleans())
        if items and cut:
            del items[draw(st.integers(0, len(items) - 1)) :]
        return items + draw(st.lists(scalars, max_size=2))
    choice = draw(st.sampled_from(["tweak", "keep", "replace"]))
    return _tweaked(value) if choice == "tweak" else value if choice == "keep" else draw(scalars)


def _tweaked(value: Any) -> Any:
    """The same JSON type, a different value (where there is one)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value - 1 if value > 0 else value + 1
    if isinstance(value, float):
        return value / 2 + 1.5
    if isinstance(value, str):
        return value + "x"
    return value


@st.composite
def pairs(draw: st.DrawFn) -> tuple[Any, Any]:
    a = draw(documents)
    return a, draw(mutated(a)) if draw(st.integers(0, 4)) else draw(documents)


def deepdiff_paths(a: Any, b: Any) -> set[tuple[str, str]]:
    report = DeepDiff(
        a,
        b,
        view="tree",
        zip_ordered_iterables=True,
        threshold_to_diff_deeper=0,
        ignore_private_variables=False,
    )
    found = set()
    for report_kind, levels in report.items():
        for level in levels:
            found.add((to_pointer(level.path(output_format="list")), DEEPDIFF_KINDS[report_kind]))
    return found


def json_compare(a: Any, b: Any) -> Comparison:
    return compare(response(orjson.dumps(a)), response(orjson.dumps(b)), UNLIMITED)


@SETTINGS
@given(pairs())
def test_changed_paths_agree_with_deepdiff(pair: tuple[Any, Any]) -> None:
    a, b = pair
    result = json_compare(a, b)
    assert paths(result) == deepdiff_paths(a, b)
    assert result.total == len(result.differences)


def _reordered(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        items = [(k, _reordered(v, rng)) for k, v in value.items()]
        rng.shuffle(items)
        return dict(items)
    if isinstance(value, list):
        return [_reordered(v, rng) for v in value]
    return value


@SETTINGS
@given(documents, st.randoms(use_true_random=False))
def test_a_document_equals_itself_in_any_layout(doc: Any, rng: random.Random) -> None:
    body = orjson.dumps(doc)
    other = orjson.dumps(_reordered(doc, rng), option=orjson.OPT_INDENT_2)
    for candidate in (body, other):
        result = compare(response(body), response(candidate), UNLIMITED)
        assert result.matched
        assert result.differences == ()
        quick = quick_compare(response(body), response(candidate), UNLIMITED)
        assert quick is None or quick.matched


@SETTINGS
@given(pairs(), st.integers(1, 5))
def test_listed_differences_are_bounded(pair: tuple[Any, Any], limit: int) -> None:
    a, b = pair
    full = json_compare(a, b)
    bounded = compare(
        response(orjson.dumps(a)), response(orjson.dumps(b)), rules(max_differences=limit)
    )
    assert bounded.total == full.total
    assert bounded.differences == full.differences[:limit]


CONTENT_TYPES = [
    None,
    "application/json",
    "application/vnd.api+json; charset=utf-8",
    "application/x-www-form-urlencoded",
    "text/plain; charset=bogus",
    "text/plain; charset=base64",  # a codec Python knows, but not a text encoding
    "text/csv; charset=rot13",
    "text/html; charset=utf-16",
    "application/xml",
    "application/octet-stream",
    "image/png",
    "multipart/form-data; boundary=x",
    ";;;",
]
CODINGS = {
    None: lambda body: body,
    "gzip": gzip.compress,
    "br": brotli.compress,
    "zstd": zstandard.ZstdCompressor().compress,
    "deflate": lambda body: body,  # not deflated: undecodable on purpose
    "gzip, unknown": gzip.compress,
}
bodies = (
    st.binary(max_size=200)
    | documents.map(orjson.dumps)
    | st.sampled_from(
        [
            b"",
            b"{",
            b"[1,",
            b"\xff\xfe",
            b'{"\\udc80": ["\\ud800"]}',
            b'"\\ud800"',
            b"a=1&a=%ZZ&&=",
            b"\x00" * 10,
            b"[" * 600 + b"]" * 600,
        ]
    )
)


@st.composite
def any_response(draw: st.DrawFn) -> Any:
    body = draw(bodies)
    coding = draw(st.sampled_from(sorted(CODINGS, key=str)))
    encoded = CODINGS[coding](body) if draw(st.booleans()) else body
    truncated = draw(st.integers(0, 5)) == 0
    size = len(encoded) + (draw(st.integers(0, 3)) if truncated else 0)
    return response(
        encoded,
        draw(st.sampled_from(CONTENT_TYPES)),
        status=draw(st.sampled_from([200, 404])),
        encoding=coding,
        size=size,
        truncated=truncated,
    )


@settings(max_examples=400, deadline=None)
@given(any_response(), any_response())
def test_no_exception_for_anything_a_backend_sends(a: Any, b: Any) -> None:
    result = compare(a, b, UNLIMITED)
    assert isinstance(result, Comparison)
    assert result.total >= len(result.differences)
    # Whatever was compared, the record can be written as a JSON log line.
    orjson.dumps([d.to_dict() for d in result.differences] + [result.excerpt, *result.notes])
    quick = quick_compare(a, b, UNLIMITED)
    if quick is not None:
        assert quick.total == result.total
    assert compare(a, a, UNLIMITED).total == 0
