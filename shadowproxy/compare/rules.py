"""The diff options of the config, merged per endpoint and compiled once.

`RuleBook.for_endpoint` answers the rules for ``"GET /users/{id}/orders"``. Every entry of
``diff.endpoints`` whose ``match`` matches the endpoint applies, in the order of the config
file: lists (``ignore``, ``unordered``, ``ignore_headers``) extend the global ones, scalars
(``tolerance``, ``null_equals_missing``) override them, so a later entry overrides an earlier
one. Writing general entries first and specific ones after them gives the expected result.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from shadowproxy.compare.paths import PathMatcher, PathRule
from shadowproxy.config import DiffConfig, DiffRules, Tolerance
from shadowproxy.endpoints import EndpointPattern

MAX_CACHED_ENDPOINTS = 4096
"""Endpoint names are folded, but a service with slugs in its paths can still have many."""

DECODE_EXPANSION = 4
"""A compressed body may decode to this many times ``diff.max_body_bytes`` before it is
compared in its encoded form instead: the bound that keeps a decompression bomb harmless."""


@dataclass(frozen=True, slots=True)
class NumericTolerance:
    """Two numbers are equal when ``|a - b| <= max(absolute, relative * max(|a|, |b|))``."""

    absolute: float = 0.0
    relative: float = 0.0


@dataclass(frozen=True, slots=True)
class CompiledRules:
    """Everything one comparison needs; immutable and picklable for worker processes."""

    paths: PathMatcher
    ignore_headers: frozenset[str]
    compare_headers: bool = True
    tolerance: NumericTolerance | None = None
    null_equals_missing: bool = False
    max_differences: int = 50
    max_decoded_bytes: int = 40 * 1024 * 1024

    @classmethod
    def default(cls) -> CompiledRules:
        return RuleBook.from_config(DiffConfig()).for_endpoint("")


def _tolerance(value: Tolerance | None) -> NumericTolerance | None:
    if value is None or (value.absolute == 0 and value.relative == 0):
        return None
    return NumericTolerance(absolute=value.absolute, relative=value.relative)


def _compile(diff: DiffConfig, entries: tuple[DiffRules, ...]) -> CompiledRules:
    ignore = list(diff.ignore)
    unordered = list(diff.unordered)
    ignore_headers = set(diff.ignore_headers)
    tolerance = diff.tolerance
    null_equals_missing = diff.null_equals_missing
    for entry in entries:
        ignore.extend(entry.ignore)
        unordered.extend(entry.unordered)
        ignore_headers.update(entry.ignore_headers)
        if entry.tolerance is not None:
            tolerance = entry.tolerance
        if entry.null_equals_missing is not None:
            null_equals_missing = entry.null_equals_missing
    path_rules = [PathRule(pattern) for pattern in dict.fromkeys(ignore)]
    path_rules += [PathRule(u.path, unordered=True, key=u.key) for u in unordered]
    return CompiledRules(
        paths=PathMatcher(path_rules),
        ignore_headers=frozenset(ignore_headers),
        compare_headers=diff.compare_headers,
        tolerance=_tolerance(tolerance),
        null_equals_missing=null_equals_missing,
        max_differences=diff.max_differences,
        max_decoded_bytes=diff.max_body_bytes * DECODE_EXPANSION,
    )


class RuleBook:
    """The compiled rules of one config, cached per endpoint; replaced whole on reload."""

    def __init__(self, diff: DiffConfig, patterns: tuple[EndpointPattern, ...]) -> None:
        self.diff = diff
        self._patterns = patterns
        self._by_endpoint: dict[str, CompiledRules] = {}
        # Endpoints matching the same entries share one CompiledRules object.
        self._by_entries: dict[tuple[int, ...], CompiledRules] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, diff: DiffConfig) -> RuleBook:
        """Raises ValueError naming the entry when an endpoint ``match`` cannot be parsed."""
        patterns = []
        for index, entry in enumerate(diff.endpoints):
            try:
                patterns.append(EndpointPattern.parse(entry.match))
            except ValueError as error:
                raise ValueError(f"diff.endpoints[{index}].match: {error}") from None
        book = cls(diff, tuple(patterns))
        book._by_entries[()] = _compile(diff, ())
        return book

    def for_endpoint(self, endpoint: str) -> CompiledRules:
        """Rules for ``"METHOD /folded/path"``; an endpoint without a method matches no
        entry that names methods."""
        rules = self._by_endpoint.get(endpoint)
        if rules is not None:
            return rules
        method, _, path = endpoint.partition(" ") if " " in endpoint else ("", "", endpoint)
        selected = tuple(
            index
            for index, pattern in enumerate(self._patterns)
            if path.startswith("/") and pattern.matches(method, path)
        )
        with self._lock:
            rules = self._by_entries.get(selected)
            if rules is None:
                entries = tuple(self.diff.endpoints[i] for i in selected)
                rules = self._by_entries[selected] = _compile(self.diff, entries)
            if len(self._by_endpoint) >= MAX_CACHED_ENDPOINTS:
                self._by_endpoint.clear()
            self._by_endpoint[endpoint] = rules
        return rules
