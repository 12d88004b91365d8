"""Building responses and rules for the diff engine tests."""

from __future__ import annotations

from typing import Any

import orjson

from shadowproxy.compare import CompiledRules, RuleBook
from shadowproxy.config import DiffConfig
from shadowproxy.exchange import Response

JSON = "application/json"


def response(
    body: bytes | str | Any = b"",
    content_type: str | None = JSON,
    *,
    status: int = 200,
    headers: tuple[tuple[str, str], ...] = (),
    encoding: str | None = None,
    size: int | None = None,
    truncated: bool = False,
) -> Response:
    """A response; a body that is neither bytes nor str is serialised as JSON."""
    if isinstance(body, str):
        body = body.encode()
    elif not isinstance(body, bytes):
        body = orjson.dumps(body)
    pairs = list(headers)
    if content_type is not None:
        pairs.insert(0, ("Content-Type", content_type))
    if encoding is not None:
        pairs.append(("Content-Encoding", encoding))
    return Response(
        status=status,
        headers=tuple(pairs),
        body=body,
        size=len(body) if size is None else size,
        latency_ms=1.0,
        truncated=truncated,
    )


def rules(endpoint: str = "GET /things/{id}", **diff: Any) -> CompiledRules:
    """Rules for ``endpoint`` from a ``diff:`` section given as keyword arguments."""
    return RuleBook.from_config(DiffConfig.model_validate(diff)).for_endpoint(endpoint)


def paths(comparison: Any) -> set[tuple[str, str]]:
    """(path, kind) of every listed body difference."""
    return {(d.path, d.kind.value) for d in comparison.differences if d.where.value == "body"}
