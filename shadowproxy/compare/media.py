"""Which comparison a body gets, from its Content-Type and, where that is silent, its bytes."""

from __future__ import annotations

import codecs
import enum

DEFAULT_CHARSET = "utf-8"

_TEXT_TYPES = frozenset(
    {
        "application/xml",
        "application/javascript",
        "application/ecmascript",
        "application/x-javascript",
        "application/yaml",
        "application/x-yaml",
        "application/x-ndjson",
        "application/graphql",
        "application/csv",
        "image/svg+xml",
    }
)
_JSON_START = frozenset(b"{[")
_WHITESPACE = b" \t\r\n"


class BodyKind(enum.StrEnum):
    JSON = "json"
    FORM = "form"
    TEXT = "text"
    BINARY = "binary"
    EMPTY = "empty"


def media_type(content_type: str | None) -> str:
    """``"Application/JSON; charset=utf-8"`` -> ``"application/json"``; ``""`` when absent."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def charset(content_type: str | None) -> str:
    """The declared charset if Python knows it as a text encoding, else UTF-8."""
    if content_type:
        for parameter in content_type.split(";")[1:]:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "charset":
                value = value.strip().strip('"')
                try:
                    name = codecs.lookup(value).name
                    # Refuses codecs that are not text (base64), and those that raise even
                    # with "replace" (idna, punycode, undefined): a body must always decode.
                    b"a\xff".decode(name, "replace")
                except (LookupError, UnicodeError):
                    break
                return name
    return DEFAULT_CHARSET


def declared_kind(content_type: str | None) -> BodyKind | None:
    """What the type says; None when there is no type to go by."""
    media = media_type(content_type)
    if not media:
        return None
    if media.endswith(("/json", "+json")):
        return BodyKind.JSON
    if media == "application/x-www-form-urlencoded":
        return BodyKind.FORM
    if media.startswith("text/") or media.endswith("+xml") or media in _TEXT_TYPES:
        return BodyKind.TEXT
    return BodyKind.BINARY


def looks_like_json(body: bytes) -> bool:
    """An object or array, by its first byte: worth trying to parse whatever the type says."""
    stripped = body.lstrip(_WHITESPACE)
    return bool(stripped) and stripped[0] in _JSON_START


def is_text(body: bytes) -> bool:
    """Valid UTF-8 without NUL bytes: text when no type says otherwise."""
    if b"\x00" in body:
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
