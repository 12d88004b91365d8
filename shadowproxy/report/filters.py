"""Which exchange records a report covers: a time window and endpoint patterns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from shadowproxy.endpoints import EndpointPattern
from shadowproxy.report.timestamps import parse_ts

_MATCH_CACHE_LIMIT = 10_000


def endpoint_matches(pattern: str, endpoint: str) -> bool:
    """True for the exact endpoint, a shell glob over the whole name (``GET /users/*``,
    ``*orders*``) or a config-style endpoint pattern (``/api/**``, ``GET,POST /users/{id}``)."""
    if pattern == endpoint or fnmatchcase(endpoint, pattern):
        return True
    method, _, path = endpoint.partition(" ")
    try:
        return EndpointPattern.parse(pattern).matches(method, path)
    except ValueError:
        return False


@dataclass(slots=True)
class RecordFilter:
    """``since <= ts < until`` and any of ``endpoints`` (all when empty); epoch seconds."""

    since: float | None = None
    until: float | None = None
    endpoints: Sequence[str] = ()
    _decided: dict[str, bool] = field(default_factory=dict, repr=False)

    @property
    def active(self) -> bool:
        return self.since is not None or self.until is not None or bool(self.endpoints)

    def endpoint_wanted(self, endpoint: str) -> bool:
        if not self.endpoints:
            return True
        decided = self._decided.get(endpoint)
        if decided is None:
            decided = any(endpoint_matches(p, endpoint) for p in self.endpoints)
            if len(self._decided) >= _MATCH_CACHE_LIMIT:
                self._decided.clear()
            self._decided[endpoint] = decided
        return decided

    def __call__(self, record: Mapping[str, Any]) -> bool:
        """Whether to keep an exchange record; malformed ones are kept for the aggregator to
        count as invalid."""
        if self.endpoints:
            endpoint = record.get("endpoint")
            if isinstance(endpoint, str) and not self.endpoint_wanted(endpoint):
                return False
        if self.since is not None or self.until is not None:
            try:
                epoch = parse_ts(record["ts"])
            except (KeyError, TypeError, ValueError, IndexError):
                return True
            if self.since is not None and epoch < self.since:
                return False
            if self.until is not None and epoch >= self.until:
                return False
        return True
