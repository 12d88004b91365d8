"""Endpoint names and endpoint patterns: pure functions over method and path.

An endpoint is the method plus the path with its ids folded, so that ``GET /users/42/orders``
and ``GET /users/7/orders`` are counted together as ``GET /users/{id}/orders``.

Paths are matched and folded in a normal form, so that every spelling of one path meets the
same rules: ``/%61dmin/./x`` and ``//admin/x`` are ``/admin/x`` (a rule that keeps ``/admin``
from the candidate must hold for all of them). What is forwarded stays the client's bytes.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import lru_cache

ID_PLACEHOLDER = "{id}"

_ID_FORMS = tuple(
    re.compile(form)
    for form in (
        r"-?\d+",  # numbers
        r"[0-9a-fA-F]{8}(?:-?[0-9a-fA-F]{4}){3}-?[0-9a-fA-F]{12}",  # UUIDs
        r"[0-9a-fA-F]{16,}",  # long hex
        r"(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{7,}",  # short hashes: a3f9c21
        r"\d{4}-\d\d-\d\d(?:T[\d:.]+(?:Z|[+-][\d:]+)?)?",  # dates and times
        r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",  # JWTs: a JSON header, base64url
        r"[^@\s]+@[^@\s]+\.[^@\s]+",  # e-mail addresses
    )
)
_TOKEN = re.compile(r"[A-Za-z0-9_+-]{16,}={0,2}")
TOKEN_MIN_SWITCHES = 3
"""Letter-digit switches that make a long segment an opaque token (a base64 id, a ULID, a pod
name's hash, cus_9s6XKzkNRiz8i3): random text switches often, names hardly ever
(password-reset-v2, quarterly_report_2024, ListOrdersByCustomerV2 switch once or never)."""


def _opaque_token(segment: str) -> bool:
    if not _TOKEN.fullmatch(segment):
        return False
    switches = 0
    for a, b in itertools.pairwise(segment):
        if a.isalnum() and b.isalnum() and a.isdigit() != b.isdigit():
            switches += 1
            if switches >= TOKEN_MIN_SWITCHES:
                return True
    return False


_UNRESERVED_ESCAPE = re.compile(r"%(2[dDeE]|3\d|[46][1-9a-fA-F]|[57][0-9aA]|5[fF]|7[eE])")


def _unescaped(match: re.Match[str]) -> str:
    return chr(int(match.group(1), 16))


def is_id(segment: str) -> bool:
    return any(form.fullmatch(segment) for form in _ID_FORMS) or _opaque_token(segment)


@lru_cache(maxsize=4096)
def normal_path(bare: str) -> str:
    """``bare`` (a path without query) as rules see it: percent-escapes of unreserved
    characters decoded and dot segments removed (RFC 3986, 6.2.2), repeated slashes merged."""
    if "%" not in bare and "//" not in bare and "/." not in bare:
        return bare
    path = _UNRESERVED_ESCAPE.sub(_unescaped, bare)
    kept: list[str] = []
    segments = path.split("/")[1:] if path.startswith("/") else path.split("/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "..":
            if kept:
                kept.pop()
            if last:
                kept.append("")
        elif segment == ".":
            if last:
                kept.append("")
        elif segment or last:
            kept.append(segment)
    return "/" + "/".join(kept)


@lru_cache(maxsize=4096)
def fold_path(path: str) -> str:
    """The path without its query, in its normal form, with id-like segments as ``{id}``."""
    bare = normal_path(path.split("?", 1)[0].split("#", 1)[0] or "/")
    return "/".join(ID_PLACEHOLDER if is_id(s) else s for s in bare.split("/"))


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
        # Written as requests are matched: /%7Euser is /~user (see normal_path).
        path = _UNRESERVED_ESCAPE.sub(_unescaped, path.strip())
        if not path.startswith("/"):
            raise ValueError(f'endpoint pattern "{text}": the path must start with "/"')
        return cls(source=text, methods=methods, regex=re.compile(_path_regex(path)))

    def matches(self, method: str, path: str) -> bool:
        """Match against a raw request path (query ignored) or an endpoint's folded path."""
        if self.methods is not None and method.upper() not in self.methods:
            return False
        bare = normal_path(path.split("?", 1)[0])
        return self.regex.fullmatch(bare) is not None

    def literal_ids(self) -> list[str]:
        """Segments written literally that endpoints fold to ``{id}``: ``/items/7`` can
        never match the endpoint ``GET /items/{id}``."""
        path = _UNRESERVED_ESCAPE.sub(_unescaped, self.source.split(None, 1)[-1])
        return [s for s in path.split("/") if is_id(s)]


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
