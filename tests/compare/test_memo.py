"""Remembered body comparisons: a hit answers what the engine would, and the memo stays bounded."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowproxy.compare import Comparer, compare
from shadowproxy.compare.fast import quick_compare
from shadowproxy.compare.memo import MAX_BODY_BYTES, BodyMemo
from shadowproxy.config import DiffConfig

from .support import paths, response, rules
from .test_properties import pairs

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DOC = {"id": 7, "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}], "trace_id": "t1"}
CHANGED = {"id": 7, "items": [{"sku": "a", "qty": 3}, {"sku": "b", "qty": 2}], "trace_id": "t2"}

heads = st.fixed_dictionaries(
    {
        "status": st.sampled_from([200, 201, 500]),
        "headers": st.sampled_from(
            [(), (("X-Version", "1"),), (("X-Version", "2"), ("Cache-Control", "no-store"))]
        ),
    }
)


@SETTINGS
@given(pairs(), st.lists(st.tuples(heads, heads), min_size=2, max_size=4), st.integers(1, 6))
def test_a_remembered_pair_answers_what_the_engine_answers(
    pair: tuple[Any, Any], exchanges: list[tuple[dict[str, Any], dict[str, Any]]], limit: int
) -> None:
    """The same bodies again and again, under changing statuses and headers."""
    memo = BodyMemo()
    r = rules(max_differences=limit)
    body_a, body_b = orjson.dumps(pair[0]), orjson.dumps(pair[1])
    for head_p, head_c in exchanges:
        primary, candidate = response(body_a, **head_p), response(body_b, **head_c)
        assert quick_compare(primary, candidate, r, memo) == compare(primary, candidate, r)
    if body_a != body_b:
        assert memo.hits == len(exchanges) - 1


def test_head_differences_come_first_and_share_the_limit() -> None:
    memo = BodyMemo()
    r = rules(max_differences=2)
    many_a = {f"k{i}": i for i in range(10)}
    many_b = {f"k{i}": -i - 1 for i in range(10)}
    quick_compare(response(many_a), response(many_b), r, memo)  # remembered with no head change
    primary = response(many_a, headers=(("X-Version", "1"),))
    candidate = response(many_b, status=500, headers=(("X-Version", "2"),))
    result = quick_compare(primary, candidate, r, memo)
    assert memo.hits == 1
    assert result == compare(primary, candidate, r)
    assert result is not None
    assert result.total == 12
    assert [d.where.value for d in result.differences] == ["status", "header"]


def test_rules_are_part_of_the_key() -> None:
    memo = BodyMemo()
    strict = rules()
    lenient = rules(ignore=["/trace_id", "/items/*/qty"])
    first = quick_compare(response(DOC), response(CHANGED), strict, memo)
    second = quick_compare(response(DOC), response(CHANGED), lenient, memo)
    assert first is not None
    assert paths(first) == {
        ("/items/0/qty", "changed"),
        ("/trace_id", "changed"),
    }
    assert second is not None
    assert second.matched
    assert memo.hits == 0
    assert len(memo) == 2


def test_content_type_and_coding_are_part_of_the_key() -> None:
    memo = BodyMemo()
    as_json = quick_compare(response(DOC), response(CHANGED), rules(), memo)
    form_a, form_b = b"a=1&b=2", b"b=2&a=1"
    as_form = quick_compare(
        response(form_a, "application/x-www-form-urlencoded"),
        response(form_b, "application/x-www-form-urlencoded"),
        rules(),
        memo,
    )
    as_bytes = quick_compare(
        response(form_a, "application/octet-stream"),
        response(form_b, "application/octet-stream"),
        rules(),
        memo,
    )
    assert as_json is not None
    assert not as_json.matched
    assert as_form is not None
    assert as_form.matched
    assert as_bytes is not None
    assert as_bytes.body_kind == "binary"
    assert not as_bytes.matched
    assert memo.hits == 0


def test_pairs_for_a_worker_stay_with_the_worker() -> None:
    """Text goes to a worker (difflib); the memo only saves the inline look at it."""
    memo = BodyMemo()
    a, b = response("one\ntwo\n", "text/plain"), response("one\nthree\n", "text/plain")
    assert quick_compare(a, b, rules(), memo) is None
    assert quick_compare(a, b, rules(), memo) is None
    assert memo.hits == 1


def test_large_bodies_are_not_remembered() -> None:
    memo = BodyMemo()
    big = {"blob": "x" * MAX_BODY_BYTES}
    quick_compare(response(big), response(dict(big, extra=1)), rules(), memo)
    assert len(memo) == 0


def test_identical_bodies_skip_the_memo() -> None:
    memo = BodyMemo()
    assert quick_compare(response(DOC), response(DOC), rules(), memo) is not None
    assert len(memo) == 0
    assert memo.misses == 0


def test_the_memo_is_bounded_in_entries_and_weight() -> None:
    memo = BodyMemo(max_entries=10, max_weight=20_000)
    r = rules()
    for i in range(100):
        quick_compare(
            response({"n": i, "s": "v" * 500}), response({"n": -i, "s": "w" * 500}), r, memo
        )
        assert len(memo) <= 10
        assert memo.weight <= 20_000
    # The newest entries are kept: the last pair is a hit, the first one is not.
    quick_compare(
        response({"n": 99, "s": "v" * 500}), response({"n": -99, "s": "w" * 500}), r, memo
    )
    assert memo.hits == 1
    quick_compare(response({"n": 0, "s": "v" * 500}), response({"n": 0, "s": "w" * 500}), r, memo)
    assert memo.hits == 1


def test_header_values_in_keys_count_toward_the_weight() -> None:
    memo = BodyMemo(max_weight=100_000)
    media = "text/plain; note=" + "x" * 8000  # a header field may be this long
    for i in range(100):
        quick_compare(response(f"a{i}\n", media), response(f"b{i}\n", media), rules(), memo)
    assert len(memo) * len(media) <= 100_000
    assert memo.weight <= 100_000


@pytest.mark.timeout(30)
async def test_a_reload_forgets_what_the_old_rules_decided() -> None:
    comparer = Comparer(DiffConfig.model_validate({"workers": 0}))
    await comparer.start()
    try:
        before = await comparer.compare("GET /orders/{id}", response(DOC), response(CHANGED))
        again = await comparer.compare("GET /orders/{id}", response(DOC), response(CHANGED))
        assert comparer.memo.hits == 1
        assert again == before
        comparer.update(
            DiffConfig.model_validate({"workers": 0, "ignore": ["/**/qty", "/trace_id"]})
        )
        after = await comparer.compare("GET /orders/{id}", response(DOC), response(CHANGED))
    finally:
        await comparer.close()
    assert before is not None
    assert not before.matched
    assert after is not None
    assert after.matched
