"""Remembered body comparisons: the same two bodies under the same rules differ the same way.

A service answers many requests with the same bytes (a product, a feature-flag document, an
error page), and a candidate that differs tends to differ the same way every time. The body
half of a comparison depends only on both bodies, the content type, both content-codings and
the rules, so it is computed once and reused; status and headers change per request and are
compared every time. Keys hold a BLAKE2b digest of the bodies, not the bodies; entries are
bounded in number and in the size of what they hold, oldest out first.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

from shadowproxy.compare.collect import Collector
from shadowproxy.compare.headers import header_value, list_value
from shadowproxy.compare.model import Difference
from shadowproxy.compare.rules import CompiledRules
from shadowproxy.exchange import Response

MAX_BODY_BYTES = 64 * 1024
"""Larger bodies are not remembered: hashing them on the event loop is not free, and the
comparison of a large pair runs in a worker anyway."""
MAX_ENTRIES = 4096
MAX_WEIGHT = 8 * 1024 * 1024
"""About how many bytes the remembered differences may hold, per process."""
ENTRY_WEIGHT = 256
"""The fixed cost of an entry: its key, its tuple, the dict slot."""
VALUE_WEIGHT = 1024
"""What a remembered object or array value may cost (`collect.brief` bounds it)."""


@dataclass(frozen=True, slots=True)
class BodyPart:
    """The body half of a comparison, as `engine.compare_bodies` leaves it in a fresh
    `Collector`."""

    differences: tuple[Difference, ...]
    total: int
    kind: str
    notes: tuple[str, ...] = ()
    excerpt: str | None = None

    @classmethod
    def collected(cls, out: Collector, kind: str, excerpt: str | None) -> BodyPart:
        return cls(tuple(out.differences), out.total, kind, tuple(out.notes), excerpt)

    @property
    def weight(self) -> int:
        return (
            ENTRY_WEIGHT
            + sum(
                ENTRY_WEIGHT + len(d.path) + _value_weight(d.primary) + _value_weight(d.candidate)
                for d in self.differences
            )
            + len(self.excerpt or "")
        )


def _value_weight(value: Any) -> int:
    if type(value) is str:
        return len(value)
    if type(value) is dict or type(value) is list:
        return VALUE_WEIGHT
    return 16


def _key_weight(key: Key) -> int:
    """The header values a key holds: a backend may send kilobytes of them."""
    return sum(len(text) for text in key[1:4] if text is not None)


class Deferred:
    """Remembered: this pair goes to a worker (large once decoded, or text for difflib)."""


DEFERRED: Final = Deferred()

Key = tuple[int, str | None, str | None, str | None, int, bytes]


class BodyMemo:
    """Body comparisons by digest of both bodies; lives as long as the rules it was filled
    under (`Comparer.update` starts a new one)."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_weight: int = MAX_WEIGHT) -> None:
        self._max_entries = max_entries
        self._max_weight = max_weight
        self._entries: dict[Key, BodyPart | Deferred] = {}
        self._weights: dict[Key, int] = {}
        self._weight = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def weight(self) -> int:
        return self._weight

    @staticmethod
    def key(primary: Response, candidate: Response, rules: CompiledRules) -> Key | None:
        """None when the pair is not worth remembering (either body too large)."""
        body_p, body_c = primary.body, candidate.body
        if len(body_p) > MAX_BODY_BYTES or len(body_c) > MAX_BODY_BYTES:
            return None
        digest = hashlib.blake2b(body_p, digest_size=16)
        digest.update(body_c)
        # The rules object is one per set of matching config entries and lives as long as the
        # memo (both are replaced on reload), so its id names it.
        return (
            id(rules),
            header_value(primary.headers, "content-type")
            or header_value(candidate.headers, "content-type"),
            list_value(primary.headers, "content-encoding"),
            list_value(candidate.headers, "content-encoding"),
            len(body_p),  # where one body ends and the other begins
            digest.digest(),
        )

    def get(self, key: Key) -> BodyPart | Deferred | None:
        part = self._entries.get(key)
        if part is None:
            self.misses += 1
        else:
            self.hits += 1
        return part

    def put(self, key: Key, part: BodyPart | Deferred) -> None:
        weight = (part.weight if isinstance(part, BodyPart) else ENTRY_WEIGHT) + _key_weight(key)
        if weight > self._max_weight or key in self._entries:
            return
        self._weight += weight
        self._entries[key] = part
        self._weights[key] = weight
        while len(self._entries) > self._max_entries or self._weight > self._max_weight:
            oldest = next(iter(self._entries))
            del self._entries[oldest]
            self._weight -= self._weights.pop(oldest)
