"""The fast path, run inline on the event loop: settle cheaply what can be settled cheaply.

Identical bytes cost a memcmp; JSON that differs only in key order or whitespace costs two
orjson parses and two serialisations. Anything else, and anything large, is left to the
detailed engine in a worker.
"""

from __future__ import annotations

from shadowproxy.compare import decode, media
from shadowproxy.compare.collect import Collector
from shadowproxy.compare.engine import compare_bodies, compare_head, content_type, result
from shadowproxy.compare.json_diff import NotJson, canonical_equal, parse_json
from shadowproxy.compare.media import BodyKind
from shadowproxy.compare.model import IDENTICAL, Comparison
from shadowproxy.compare.rules import CompiledRules
from shadowproxy.exchange import Response

INLINE_MAX_BYTES = 64 * 1024
"""Bodies up to this size (each, decoded) may be parsed on the event loop: about 0.1 ms of
orjson per body. Larger ones go to a worker, so one 5 MB document never stalls the proxy."""


def _body_kind(primary: Response, candidate: Response) -> BodyKind:
    """How equal bodies would have been compared, without looking at them closely."""
    if not primary.body:
        return BodyKind.EMPTY
    declared = media.declared_kind(content_type(primary, candidate))
    if declared is None:
        return BodyKind.JSON if media.looks_like_json(primary.body) else BodyKind.TEXT
    if declared is not BodyKind.JSON and media.looks_like_json(primary.body):
        return BodyKind.JSON  # only a guess; the engine would have parsed it to be sure
    return declared


def _small_decoded(response: Response) -> bytes | None:
    applied = decode.codings(response.header("content-encoding"))
    if not applied:
        return response.body if len(response.body) <= INLINE_MAX_BYTES else None
    if len(response.body) > INLINE_MAX_BYTES:
        return None
    try:
        return decode.decode(response.body, applied, INLINE_MAX_BYTES)
    except decode.DecodeError:
        return None  # the engine decodes again and notes why it failed


def _bodies_equal(primary: Response, candidate: Response) -> bool:
    """True when the bodies are certainly equal; False means "not known here"."""
    if primary.body == candidate.body and primary.header("content-encoding") == candidate.header(
        "content-encoding"
    ):
        return True
    body_p, body_c = _small_decoded(primary), _small_decoded(candidate)
    if body_p is None or body_c is None:
        return False
    if body_p == body_c:
        return True
    declared = media.declared_kind(content_type(primary, candidate))
    if declared is BodyKind.JSON or (
        declared is not BodyKind.FORM
        and media.looks_like_json(body_p)
        and media.looks_like_json(body_c)
    ):
        try:
            return canonical_equal(parse_json(body_p), parse_json(body_c))
        except NotJson:
            return False
    return False


def quick_compare(
    primary: Response, candidate: Response, rules: CompiledRules
) -> Comparison | None:
    """The comparison if it is cheap to get, else None: then call `engine.compare`."""
    if primary.truncated or candidate.truncated:
        # Only sizes and a prefix memcmp, unless the prefixes differ: hashing them is not cheap.
        if primary.size == candidate.size and primary.body != candidate.body:
            return None
        out = Collector(rules.max_differences)
        compare_head(primary, candidate, rules, out)
        body_kind, _ = compare_bodies(primary, candidate, rules, out)
        return result(out, body_kind)
    if not _bodies_equal(primary, candidate):
        return None
    if primary.status == candidate.status and (
        not rules.compare_headers or primary.headers == candidate.headers
    ):
        return IDENTICAL
    out = Collector(rules.max_differences)
    compare_head(primary, candidate, rules, out)
    if out.total == 0:
        return IDENTICAL
    return result(out, _body_kind(primary, candidate))
