"""Endpoint names and endpoint patterns: pure functions over method and path.

An endpoint is the method plus the path with its ids folded, so that ``GET /users/42/orders``
and ``GET /users/7/orders`` are counted together as ``GET /users/{id}/orders``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

ID_PLACEHOLDER = "{id}"

_UUID = re.compile(r"[0-9a-fA-F]{8}(?:-?[0-9a-fA-F]{4}){3}-?[0-9a-fA-F]{12}")
_NUMBER = re.compile(r"-?\d+")
_LONG_HEX = re.compile(r"[0-9a-fA-F]{16,}")
# Opaque tokens: long, with both digits and letters (base64 ids, ULIDs, hashes).
_TOKEN = re.compile(r"(?=[A-Za-z0-9_-]*\d)(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{20,}")


def _is_id(segment: str) -> bool:
    return any(p.fullmatch(segment) for p in (_NUMBER, _UUID, _LONG_HEX, _TOKEN))


@lru_cache(maxsize=4096)
def fold_path(path: str) -> str:
    """The path without its query, with id-like segments replaced by ``{id}``."""
    bare = path.split("?", 1)[0].split("#", 1)[0] or "/"
    return "/".join(ID_PLACEHOLDER if _is_id(s) else s for s in bare.split("/"))


def endpoint_of(method: str, path: str) -> str:
    return f"{method.upper()} {fold_path(path)}"


@dataclass(frozen=True, slots=True)
class EndpointPattern:
    """``GET /users/{id}``, ``/users/{id}`` (any method), ``GET,POST /api/**`` or a glob.

    In the path, ``{name}`` and ``*`` match one segment, ``**`` any number of segments
    (including none); a trailing ``*`` inside a segment matches the rest of that segment.
    """

    source: str
    methods: frozenset[str] | None
    regex: re.Pattern[str]

    @classmethod
    def parse(cls, text: str) -> EndpointPattern:
        text = text.strip()
        methods: frozenset[str] | None = None
        path = text
        if " " in text:
            method_part, path = text.split(None, 1)
            names = {m.strip().upper() for m in method_part.split(",") if m.strip()}
            methods = None if names in ({"*"}, {"ANY"}) else frozenset(names)
        path = path.strip()
        if not path.startswith("/"):
            raise ValueError(f'endpoint pattern "{text}": the path must start with "/"')
        return cls(source=text, methods=methods, regex=re.compile(_path_regex(path)))

    def matches(self, method: str, path: str) -> bool:
        """Match against a raw request path (query ignored) or an endpoint's folded path."""
        if self.methods is not None and method.upper() not in self.methods:
            return False
        bare = path.split("?", 1)[0]
        return self.regex.fullmatch(bare) is not None


def _path_regex(path: str) -> str:
    parts: list[str] = []
    for segment in path.strip("/").split("/") if path != "/" else []:
        if segment == "**":
            parts.append("(?:/[^/]*)*")
        elif segment == "*" or re.fullmatch(r"\{[^/{}]*\}", segment):
            parts.append("/[^/]+")
        else:
            pieces = [re.escape(p) for p in re.split(r"\{[^/{}]*\}|\*", segment)]
            parts.append("/" + "[^/]*".join(pieces))
    regex = "".join(parts) or "/"
    if path.endswith("/") and path != "/":
        regex += "/"
    return regex
