"""Bodies compared as opaque bytes: by length and SHA-256."""

from __future__ import annotations

import hashlib

from shadowproxy.compare.collect import Collector
from shadowproxy.compare.model import Kind, Where


def fingerprint(body: bytes | memoryview) -> dict[str, int | str]:
    return {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def compare_binary(primary: bytes, candidate: bytes, out: Collector) -> None:
    if primary != candidate:
        out.add(Where.BODY, "", Kind.CHANGED, fingerprint(primary), fingerprint(candidate))


Size = tuple[int, bool]
"""A body's size and whether it is known; unknown (cut before its end, no length declared),
the size is only what was read: a lower bound."""


def sizes_differ(primary: Size, candidate: Size) -> bool:
    """Whether the sizes provably differ: both known and unequal, or one known and smaller
    than the other's lower bound."""
    (p, p_known), (c, c_known) = primary, candidate
    if p_known and c_known:
        return p != c
    if p_known:
        return c > p
    if c_known:
        return p > c
    return False


def _shown(size: Size) -> dict[str, int]:
    return {"bytes": size[0]} if size[1] else {"bytes_at_least": size[0]}


def compare_truncated(
    primary: bytes, primary_size: Size, candidate: bytes, candidate_size: Size, out: Collector
) -> None:
    """Only a prefix of at least one body was captured: compare what can be known.

    Sizes that provably differ are a difference. Otherwise equal captured prefixes are not
    reported as a difference, but the note says the rest was not seen.
    """
    out.note("body_truncated")
    if sizes_differ(primary_size, candidate_size):
        out.add(Where.BODY, "", Kind.CHANGED, _shown(primary_size), _shown(candidate_size))
        return
    seen = min(len(primary), len(candidate))
    head_p, head_c = memoryview(primary)[:seen], memoryview(candidate)[:seen]
    if head_p != head_c:
        out.add(
            Where.BODY,
            "",
            Kind.CHANGED,
            {**_shown(primary_size), "captured": seen, "sha256": fingerprint(head_p)["sha256"]},
            {**_shown(candidate_size), "captured": seen, "sha256": fingerprint(head_c)["sha256"]},
        )
