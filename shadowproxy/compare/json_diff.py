"""Structural diff of two parsed JSON documents, in one walk over both.

Key order and whitespace never count (they are gone after parsing). Types count: ``1``,
``1.0``, ``true`` and ``"1"`` are four different values, reported with kind ``type``.
Arrays are compared by position; extra indices are reported as added or removed, unless a
rule makes the array unordered. Subtrees that are equal are skipped at C speed: Python's
``==`` finds most of them, and because it also equates ``1``, ``1.0`` and ``true`` a
canonical serialisation confirms the few it cannot tell apart.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from fractions import Fraction
from typing import Any, cast

import orjson

from shadowproxy.compare.collect import Collector, brief
from shadowproxy.compare.model import Difference, Kind, Where
from shadowproxy.compare.paths import PathRule, State
from shadowproxy.compare.pointer import Key, to_pointer
from shadowproxy.compare.rules import CompiledRules, NumericTolerance
from shadowproxy.logsafe import loggable

_MISSING: Any = object()
_CANONICAL = orjson.OPT_SORT_KEYS

PRUNE_MIN_SIZE = 2
"""Containers smaller than this are walked directly; the equality check would cost more. From
two members up (an API's list of small objects), checking equality first is cheaper."""


def canonical_equal(a: Any, b: Any) -> bool:
    """True when two parsed documents are the same JSON, types included."""
    try:
        # Both sides were parsed from similar documents, so their keys are usually in the
        # same order: the same bytes unsorted settle it without sorting every object.
        return orjson.dumps(a) == orjson.dumps(b) or orjson.dumps(
            a, option=_CANONICAL
        ) == orjson.dumps(b, option=_CANONICAL)
    except orjson.JSONEncodeError:  # deeper than orjson serialises: let the walk decide
        return False


def diff_json(primary: Any, candidate: Any, rules: CompiledRules, out: Collector) -> None:
    """Add the differences between two parsed documents to ``out``.

    Raises RecursionError for documents nested deeper than the interpreter allows.
    """
    _JsonDiff(out, rules).value(primary, candidate, rules.paths.start)


def _canonical(value: Any) -> Hashable:
    kind = type(value)
    if kind is dict or kind is list:
        try:
            return orjson.dumps(value, option=_CANONICAL)
        except orjson.JSONEncodeError:
            return repr(_sorted_deep(value))
    return (kind, value)


def _sorted_deep(value: Any) -> Any:
    if type(value) is dict:
        return tuple(sorted((k, _sorted_deep(v)) for k, v in value.items()))
    if type(value) is list:
        return ("list", *(_sorted_deep(v) for v in value))
    return (type(value).__name__, value)


def _without_ignored(value: Any, state: State) -> Any:
    """A copy of ``value`` without its ignored parts, unordered arrays put in a fixed order."""
    if type(value) is dict:
        kept = {}
        for key, member in value.items():
            below = state.step(key)
            if below is None:
                kept[key] = member
            elif not below.ignored:
                kept[key] = _without_ignored(member, below)
        return kept
    if type(value) is list:
        items = []
        for index, item in enumerate(value):
            below = state.step(index)
            if below is None:
                items.append(item)
            elif not below.ignored:
                items.append(_without_ignored(item, below))
        if state.unordered is not None:
            items.sort(key=lambda item: repr(_canonical(item)))
        return items
    return value


class _JsonDiff:
    __slots__ = ("_keys", "_null_equals_missing", "_out", "_tolerance")

    def __init__(self, out: Collector, rules: CompiledRules) -> None:
        self._out = out
        self._keys: list[Key] = []
        self._tolerance: NumericTolerance | None = rules.tolerance
        self._null_equals_missing = rules.null_equals_missing

    def _report(self, kind: Kind, primary: Any, candidate: Any) -> None:
        out = self._out
        out.total += 1
        if len(out.differences) < out.limit:
            out.differences.append(
                Difference(
                    Where.BODY,
                    loggable(to_pointer(self._keys)),
                    kind,
                    brief(primary),
                    brief(candidate),
                )
            )

    def _report_at(self, key: Key, kind: Kind, primary: Any, candidate: Any) -> None:
        self._keys.append(key)
        self._report(kind, primary, candidate)
        self._keys.pop()

    def _close(self, a: float, b: float) -> bool:
        tolerance = self._tolerance
        assert tolerance is not None
        if type(a) is int:
            return _ints_close(a, cast(int, b), tolerance)
        return math.isclose(a, b, rel_tol=tolerance.relative, abs_tol=tolerance.absolute)

    def value(self, a: Any, b: Any, state: State | None) -> None:
        if state is not None and state.ignored:
            return
        kind = type(a)
        if kind is not type(b):
            self._report(Kind.TYPE, a, b)
        elif kind is dict:
            if len(a) < PRUNE_MIN_SIZE or a != b or not canonical_equal(a, b):
                self._object(a, b, state)
        elif kind is list:
            if len(a) < PRUNE_MIN_SIZE or a != b or not canonical_equal(a, b):
                if state is not None and state.unordered is not None:
                    self._unordered(a, b, state, state.unordered)
                else:
                    self._array(a, b, state)
        elif a != b:
            numeric = kind is int or kind is float
            if numeric and self._tolerance is not None and self._close(a, b):
                return
            self._report(Kind.CHANGED, a, b)

    def _object(self, a: dict[str, Any], b: dict[str, Any], state: State | None) -> None:
        keys = self._keys
        removed = 0
        for key, va in a.items():
            vb = b.get(key, _MISSING)
            if vb is _MISSING:
                removed += 1
                if va is None and self._null_equals_missing:
                    continue
                if state is None or not _ignored(state, key):
                    self._report_at(key, Kind.REMOVED, va, None)
                continue
            kind = type(va)
            if kind is type(vb) and kind is not dict and kind is not list and va == vb:
                continue
            keys.append(key)
            self.value(va, vb, None if state is None else state.step(key))
            keys.pop()
        if len(b) > len(a) - removed:
            for key, vb in b.items():
                if key in a:
                    continue
                if vb is None and self._null_equals_missing:
                    continue
                if state is None or not _ignored(state, key):
                    self._report_at(key, Kind.ADDED, None, vb)

    def _array(self, a: list[Any], b: list[Any], state: State | None) -> None:
        keys = self._keys
        for index, (va, vb) in enumerate(zip(a, b, strict=False)):
            kind = type(va)
            if kind is type(vb) and kind is not dict and kind is not list and va == vb:
                continue
            keys.append(index)
            self.value(va, vb, None if state is None else state.step(index))
            keys.pop()
        self._extra(a, range(len(b), len(a)), Kind.REMOVED, state)
        self._extra(b, range(len(a), len(b)), Kind.ADDED, state)

    def _extra(
        self, items: list[Any], indices: Iterable[int], kind: Kind, state: State | None
    ) -> None:
        for index in indices:
            if state is None or not _ignored(state, index):
                item = items[index]
                if kind is Kind.REMOVED:
                    self._report_at(index, kind, item, None)
                else:
                    self._report_at(index, kind, None, item)

    def _pair(self, a: list[Any], b: list[Any], i: int, j: int, state: State) -> None:
        """Compare two matched elements; the path names the primary's index."""
        self._keys.append(i)
        self.value(a[i], b[j], state.step(i))
        self._keys.pop()

    def _unordered(self, a: list[Any], b: list[Any], state: State, rule: PathRule) -> None:
        loose_a: list[int] = list(range(len(a)))
        loose_b: list[int] = list(range(len(b)))
        if rule.key is not None:
            loose_a, loose_b = self._by_key(a, b, state, rule.key)
        self._as_multisets(a, b, loose_a, loose_b, state)

    def _by_key(
        self, a: list[Any], b: list[Any], state: State, key: str
    ) -> tuple[list[int], list[int]]:
        """Pair elements by their ``key`` member; returns the indices without that member.

        Elements that share a key are matched as a multiset first, as unkeyed ones are: the
        same duplicates in another order are no difference.
        """
        groups: dict[Hashable, tuple[list[int], list[int]]] = {}
        loose_a: list[int] = []
        loose_b: list[int] = []
        for side, items, loose in ((0, a, loose_a), (1, b, loose_b)):
            for index, item in enumerate(items):
                if type(item) is dict and key in item:
                    groups.setdefault(_canonical(item[key]), ([], []))[side].append(index)
                else:
                    loose.append(index)
        removed: list[int] = []
        added: list[int] = []
        for ia, ib in groups.values():
            if len(ia) == 1 and len(ib) == 1:
                self._pair(a, b, ia[0], ib[0], state)
                continue
            left_a, left_b = self._unmatched(a, b, ia, ib, state)
            for i, j in zip(left_a, left_b, strict=False):
                self._pair(a, b, i, j, state)
            removed += left_a[len(left_b) :]
            added += left_b[len(left_a) :]
        self._extra(a, sorted(removed), Kind.REMOVED, state)
        self._extra(b, sorted(added), Kind.ADDED, state)
        return loose_a, loose_b

    def _unmatched(
        self, a: list[Any], b: list[Any], ia: list[int], ib: list[int], state: State
    ) -> tuple[list[int], list[int]]:
        """The indices of ``ia`` and ``ib`` left once equal elements are matched through
        hashes of their canonical forms (linear, not quadratic), each in order."""
        nulls = self._null_equals_missing
        slots: dict[Hashable, list[int]] = {}
        for j in ib:
            slots.setdefault(_element_key(b[j], state.step(j), nulls), []).append(j)
        for indices in slots.values():
            indices.reverse()
        left_a: list[int] = []
        for i in ia:
            found = slots.get(_element_key(a[i], state.step(i), nulls))
            if found:
                found.pop()
            else:
                left_a.append(i)
        return left_a, sorted(j for indices in slots.values() for j in indices)

    def _as_multisets(
        self, a: list[Any], b: list[Any], ia: list[int], ib: list[int], state: State
    ) -> None:
        """Match equal elements; what is left over is paired in order and diffed in detail."""
        if not ia and not ib:
            return
        left_a, left_b = self._unmatched(a, b, ia, ib, state)
        for i, j in zip(left_a, left_b, strict=False):
            self._pair(a, b, i, j, state)
        self._extra(a, left_a[len(left_b) :], Kind.REMOVED, state)
        self._extra(b, left_b[len(left_a) :], Kind.ADDED, state)


def _ints_close(a: int, b: int, tolerance: NumericTolerance) -> bool:
    """Exact for integers of any size: through floats, ids beyond 2**53 would compare equal to
    their neighbours, and integers beyond 1e308 would not convert at all."""
    gap = abs(a - b)
    if gap <= tolerance.absolute:
        return True
    return Fraction(gap) <= Fraction(tolerance.relative) * max(abs(a), abs(b))


def _ignored(state: State, key: Key) -> bool:
    below = state.step(key)
    return below is not None and below.ignored


def _element_key(item: Any, state: State | None, drop_nulls: bool = False) -> Hashable:
    if state is not None:
        if state.ignored:
            return None
        item = _without_ignored(item, state)
    if drop_nulls:  # null_equals_missing: {"note": null} and {} are the same element
        item = _without_nulls(item)
    return _canonical(item)


def _without_nulls(value: Any) -> Any:
    if type(value) is dict:
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if type(value) is list:
        return [_without_nulls(v) for v in value]
    return value
