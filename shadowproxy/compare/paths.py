"""JSON Pointer patterns compiled to a small automaton that is stepped one key at a time.

A pattern is a pointer whose tokens may be ``*`` (exactly one key or index) or ``**`` (any
number of keys, none included). The diff walks both documents once and carries a `State`
along; a state knows whether the place it stands on is ignored or holds an unordered array.
States and their transitions are built lazily and cached, so a walk pays for a dictionary
lookup per key at most, and for nothing at all once no pattern can match below a place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shadowproxy.compare.pointer import Key, split

ONE = "*"
ANY_DEPTH = "**"


@dataclass(frozen=True, slots=True)
class PathRule:
    """One pattern and what it means where it matches."""

    pattern: str
    unordered: bool = False
    """False: the place is ignored. True: the array there is compared without order."""
    key: str | None = None
    """For unordered arrays: the member that pairs elements up."""


Position = tuple[int, int]
"""(rule index, index of the next token to match)."""


class State:
    """A set of partly matched patterns at one place of a document."""

    __slots__ = (
        "_default",
        "_literal",
        "_literals",
        "_matcher",
        "ignored",
        "positions",
        "unordered",
    )

    def __init__(self, matcher: PathMatcher, positions: frozenset[Position]) -> None:
        self._matcher = matcher
        self.positions = positions
        rules = matcher.rules
        accepted = [rules[r] for r, i in positions if i == len(matcher.tokens[r])]
        self.ignored = any(not rule.unordered for rule in accepted)
        self.unordered: PathRule | None = next(
            (rule for rule in sorted(accepted, key=rules.index) if rule.unordered), None
        )
        self._literals = frozenset(
            matcher.tokens[r][i]
            for r, i in positions
            if i < len(matcher.tokens[r]) and matcher.tokens[r][i] not in (ONE, ANY_DEPTH)
        )
        self._literal: dict[str, State | None] = {}
        self._default: State | bool | None = False  # False: not computed yet

    def step(self, key: Key) -> State | None:
        """The state one key further down; None when no pattern can match any more."""
        if self._literals:
            text = str(key)
            if text in self._literals:
                try:
                    return self._literal[text]
                except KeyError:
                    nxt = self._literal[text] = self._matcher.advance(self.positions, text)
                    return nxt
        default = self._default
        if default is False:
            default = self._default = self._matcher.advance(self.positions, None)
        return default  # type: ignore[return-value]


class PathMatcher:
    """Compiled patterns; picklable as their source text."""

    def __init__(self, rules: Iterable[PathRule]) -> None:
        self.rules: tuple[PathRule, ...] = tuple(rules)
        self.tokens: tuple[tuple[str, ...], ...] = tuple(
            tuple(split(rule.pattern)) for rule in self.rules
        )
        self.unordered_at_any_depth = any(
            rule.unordered and ANY_DEPTH in tokens
            for rule, tokens in zip(self.rules, self.tokens, strict=True)
        )
        """Whether arrays may be unordered nested in each other without bound (a ``**``
        pattern): each level matches its elements again, and the diff's time grows faster
        than the document (seconds for 16 KB nested a few hundred deep)."""
        self._states: dict[frozenset[Position], State] = {}
        self.start: State | None = self._state(
            self._closure((r, 0) for r in range(len(self.rules)))
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (PathMatcher, (self.rules,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PathMatcher) and other.rules == self.rules

    def __hash__(self) -> int:
        return hash(self.rules)

    def __repr__(self) -> str:
        return f"PathMatcher({list(self.rules)!r})"

    def _closure(self, positions: Iterable[Position]) -> frozenset[Position]:
        # "**" may match no key at all, so standing before it is also standing after it.
        result: set[Position] = set()
        for r, i in positions:
            tokens = self.tokens[r]
            result.add((r, i))
            while i < len(tokens) and tokens[i] == ANY_DEPTH:
                i += 1
                result.add((r, i))
        return frozenset(result)

    def _state(self, positions: frozenset[Position]) -> State | None:
        if not positions:
            return None
        state = self._states.get(positions)
        if state is None:
            state = self._states[positions] = State(self, positions)
        return state

    def advance(self, positions: frozenset[Position], key: str | None) -> State | None:
        """Step every position over ``key``; None stands for a key no literal token names."""
        moved: list[Position] = []
        for r, i in positions:
            tokens = self.tokens[r]
            if i == len(tokens):
                continue
            token = tokens[i]
            if token == ANY_DEPTH:
                moved.append((r, i))
            elif token in (ONE, key):
                moved.append((r, i + 1))
        return self._state(self._closure(moved))


def matches(matcher: PathMatcher, keys: Iterable[Key]) -> State | None:
    """The state reached at ``keys`` from the root, for callers outside a walk."""
    state = matcher.start
    for key in keys:
        if state is None or state.ignored:
            return state
        state = state.step(key)
    return state
