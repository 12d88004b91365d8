"""What a comparison produces: differences at named places, and their total."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Where(enum.StrEnum):
    STATUS = "status"
    HEADER = "header"
    BODY = "body"


class Kind(enum.StrEnum):
    CHANGED = "changed"
    ADDED = "added"
    REMOVED = "removed"
    TYPE = "type"
    """Same place, different JSON type: ``1`` became ``"1"`` or ``1.0``, a number ``null``."""


@dataclass(frozen=True, slots=True)
class Difference:
    where: Where
    path: str
    """A JSON Pointer (RFC 6901) into the body, a header name, or "" for the status."""
    kind: Kind
    primary: Any
    candidate: Any

    def to_dict(self) -> dict[str, Any]:
        return {
            "where": self.where.value,
            "path": self.path,
            "kind": self.kind.value,
            "primary": self.primary,
            "candidate": self.candidate,
        }


@dataclass(frozen=True, slots=True)
class Comparison:
    differences: tuple[Difference, ...]
    """At most ``diff.max_differences`` of them; ``total`` counts all."""
    total: int
    body_kind: str = "empty"
    """How the bodies were compared: json, form, text, binary or empty."""
    notes: tuple[str, ...] = ()
    """Facts a reader needs, such as "body_truncated" when only a prefix was compared."""
    excerpt: str | None = None
    """A bounded unified-diff excerpt for text bodies."""

    @property
    def matched(self) -> bool:
        return self.total == 0


IDENTICAL = Comparison(differences=(), total=0)
"""A match of two empty bodies; `matching` has one for each way of comparing bodies."""

_MATCHES: dict[str, Comparison] = {IDENTICAL.body_kind: IDENTICAL}


def matching(body_kind: str) -> Comparison:
    """A match with nothing to note, its bodies compared as ``body_kind``: one shared object
    per kind (there are five), so the many matches allocate nothing."""
    found = _MATCHES.get(body_kind)
    if found is None:
        found = _MATCHES[body_kind] = Comparison(differences=(), total=0, body_kind=body_kind)
    return found
