"""``application/x-www-form-urlencoded`` bodies, compared as multimaps: key -> values."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from shadowproxy.compare.collect import Collector
from shadowproxy.compare.model import Kind, Where
from shadowproxy.compare.paths import State
from shadowproxy.compare.pointer import escape
from shadowproxy.compare.text import shown


def parse_form(body: bytes) -> dict[str, list[str]]:
    """Keys in order of first appearance, each with its values in order; blanks kept.

    Bytes that are not UTF-8, raw or percent-encoded, stay distinct (as lone surrogates):
    decoded with "replace", ``caf%E9`` and ``caf%E8`` would both read ``caf\ufffd``.
    """
    fields: dict[str, list[str]] = {}
    text = body.decode("utf-8", "surrogateescape")
    for key, value in parse_qsl(text, keep_blank_values=True, errors="surrogateescape"):
        fields.setdefault(key, []).append(value)
    return fields


def _shown(values: list[str]) -> Any:
    values = [shown(v) for v in values]
    return values[0] if len(values) == 1 else values


def compare_form(primary: bytes, candidate: bytes, state: State | None, out: Collector) -> None:
    """Differences at ``/key``; the ``ignore`` and ``unordered`` patterns apply to keys."""
    a, b = parse_form(primary), parse_form(candidate)
    for key in dict.fromkeys([*a, *b]):
        below = None if state is None else state.step(key)
        if below is not None and below.ignored:
            continue
        values_a, values_b = a.get(key), b.get(key)
        if values_a == values_b:
            continue
        path = "/" + escape(shown(key))
        if values_b is None:
            out.add(Where.BODY, path, Kind.REMOVED, _shown(values_a or []), None)
        elif values_a is None:
            out.add(Where.BODY, path, Kind.ADDED, None, _shown(values_b))
        elif below is None or below.unordered is None or sorted(values_a) != sorted(values_b):
            out.add(Where.BODY, path, Kind.CHANGED, _shown(values_a), _shown(values_b))
