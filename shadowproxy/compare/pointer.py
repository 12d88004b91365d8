"""JSON Pointers (RFC 6901): building them from keys and splitting them back."""

from __future__ import annotations

from collections.abc import Iterable

Key = str | int
"""An object member name or an array index."""


def escape(key: Key) -> str:
    """One reference token: ``~`` becomes ``~0`` and ``/`` becomes ``~1``."""
    if type(key) is int:
        return str(key)
    text = str(key)
    if "~" in text or "/" in text:
        return text.replace("~", "~0").replace("/", "~1")
    return text


def unescape(token: str) -> str:
    # "~1" first would turn "~01" into "/", which RFC 6901 section 4 forbids.
    return token.replace("~1", "/").replace("~0", "~")


def to_pointer(keys: Iterable[Key]) -> str:
    """``["items", 0, "a/b"]`` -> ``/items/0/a~1b``; no keys is the whole document, ``""``."""
    return "".join("/" + escape(key) for key in keys)


def split(pointer: str) -> list[str]:
    """The unescaped reference tokens of a pointer; ``""`` has none."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ValueError(f'JSON Pointer "{pointer}" must be empty or start with "/"')
    return [unescape(token) for token in pointer[1:].split("/")]
