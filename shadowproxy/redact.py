"""Keeping secrets out of what is written: body fields named by ``log.redact`` patterns.

Secret headers are redacted where differences are recorded (``compare/headers.py``) and again
in the record; this module covers JSON body values, at any depth below the place a recorded
difference stands.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from shadowproxy.compare.paths import PathMatcher, PathRule, State, matches
from shadowproxy.compare.pointer import escape, split
from shadowproxy.headers import REDACTED


class Redactor:
    """Replaces the values at configured JSON Pointer patterns with ``"[redacted]"``."""

    def __init__(self, patterns: Iterable[str]) -> None:
        rules = [PathRule(p) for p in patterns]
        self._matcher = PathMatcher(rules) if rules else None

    def __bool__(self) -> bool:
        return self._matcher is not None

    def value(self, pointer: str, value: Any) -> Any:
        """``value`` found at ``pointer`` in a body, with the secrets at or below it replaced."""
        if self._matcher is None:
            return value
        state = matches(self._matcher, split(pointer))
        return _walk(state, value)

    def document(self, value: Any) -> tuple[Any, list[str]]:
        """A whole body's value with its secrets replaced, and the pointers replaced there
        (for the capture, which must say where a recorded body no longer holds the original)."""
        if self._matcher is None:
            return value, []
        found: list[str] = []
        return _walk_listing(self._matcher.start, value, "", found), found

    def differences(self, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Recorded differences (as dicts) with body values redacted."""
        if self._matcher is None:
            return list(items)
        out = []
        for item in items:
            if item.get("where") == "body":
                item = {
                    **item,
                    "primary": self.value(item["path"], item["primary"]),
                    "candidate": self.value(item["path"], item["candidate"]),
                }
            out.append(item)
        return out


def _walk(state: State | None, value: Any) -> Any:
    if state is None:
        return value
    if state.ignored:
        return REDACTED
    if isinstance(value, dict):
        return {k: _walk(state.step(k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(state.step(i), v) for i, v in enumerate(value)]
    return value


def _walk_listing(state: State | None, value: Any, pointer: str, found: list[str]) -> Any:
    if state is None:
        return value
    if state.ignored:
        found.append(pointer)
        return REDACTED
    if isinstance(value, dict):
        return {
            k: _walk_listing(state.step(k), v, f"{pointer}/{escape(k)}", found)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            _walk_listing(state.step(i), v, f"{pointer}/{i}", found) for i, v in enumerate(value)
        ]
    return value
