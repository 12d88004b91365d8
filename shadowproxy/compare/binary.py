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


def compare_truncated(
    primary: bytes,
    primary_size: int | None,
    candidate: bytes,
    candidate_size: int | None,
    out: Collector,
) -> None:
    """Only a prefix of at least one body was captured: compare what can be known.

    Different sizes are a difference (a size is None when the body was cut before its end
    and declared no length). Equal or unknown sizes with equal captured prefixes are not
    reported as a difference, but the note says the rest was not seen.
    """
    out.note("body_truncated")
    if primary_size is not None and candidate_size is not None and primary_size != candidate_size:
        out.add(Where.BODY, "", Kind.CHANGED, {"bytes": primary_size}, {"bytes": candidate_size})
        return
    seen = min(len(primary), len(candidate))
    head_p, head_c = memoryview(primary)[:seen], memoryview(candidate)[:seen]
    if head_p != head_c:
        out.add(
            Where.BODY,
            "",
            Kind.CHANGED,
            {"bytes": primary_size, "captured": seen, "sha256": fingerprint(head_p)["sha256"]},
            {"bytes": candidate_size, "captured": seen, "sha256": fingerprint(head_c)["sha256"]},
        )
