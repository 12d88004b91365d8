"""Text, XML and HTML bodies, compared line by line with a bounded unified-diff excerpt."""

from __future__ import annotations

import difflib
import re
from typing import Any

from shadowproxy.compare.collect import Collector
from shadowproxy.compare.model import Kind, Where
from shadowproxy.logsafe import loggable

SUMMARY_CHARS = 120
"""Characters of the first differing line kept in a difference's summary."""
CONTEXT_LINES = 3
DIFF_WINDOW_LINES = 400
"""Lines per side handed to difflib, from the first difference on: difflib is quadratic
at worst, and an excerpt only shows the first hunks anyway."""
EXCERPT_MAX_LINES = 40
EXCERPT_MAX_CHARS = 4000
EXCERPT_LINE_CHARS = 200

_HUNK = re.compile(r"^@@ -(\d+)(,\d+)? \+(\d+)(,\d+)? @@")


_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def shown(text: str) -> str:
    """Text as logged: bytes the charset could not decode (kept as lone surrogates by
    ``surrogateescape``) are written ``\\xe9``, so that two such lines differ in the log too."""
    if text.isascii():
        return text
    return loggable(_ESCAPED_BYTE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", text))


def _summary(lines: list[str], index: int) -> dict[str, Any]:
    text = shown(lines[index][:SUMMARY_CHARS]) if index < len(lines) else None
    return {"line": index + 1, "text": text, "lines": len(lines)}


def _renumber(line: str, offset: int) -> str:
    """difflib numbers the window from 1; the excerpt shows the document's line numbers."""
    match = _HUNK.match(line)
    if not match or not offset:
        return line
    a, a_len, b, b_len = match.groups()
    start_a, start_b = int(a) + offset, int(b) + offset
    return f"@@ -{start_a}{a_len or ''} +{start_b}{b_len or ''} @@" + line[match.end() :]


def excerpt(lines_a: list[str], lines_b: list[str], first: int) -> str:
    """A unified diff of the region around the first difference, bounded in lines and chars."""
    low = max(0, first - CONTEXT_LINES)
    # The longer side's window is longer by the difference in length, so that lines only
    # inserted (or removed) near the top do not push the window's far end out of step and show
    # the lines past it as removed.
    grow = len(lines_b) - len(lines_a)
    window_a = lines_a[low : first + DIFF_WINDOW_LINES + max(0, -grow)]
    window_b = lines_b[low : first + DIFF_WINDOW_LINES + max(0, grow)]
    diff = difflib.unified_diff(
        window_a, window_b, "primary", "candidate", lineterm="", n=CONTEXT_LINES
    )
    kept: list[str] = []
    size = 0
    for count, line in enumerate(diff):
        line = _renumber(line, low)
        if len(line) > EXCERPT_LINE_CHARS:
            line = line[:EXCERPT_LINE_CHARS] + "..."
        if count >= EXCERPT_MAX_LINES or size + len(line) > EXCERPT_MAX_CHARS:
            kept.append("... (excerpt cut)")
            break
        kept.append(line)
        size += len(line) + 1
    return shown("\n".join(kept))


def _newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # a final newline ends the last line; it does not start another
    return lines


def compare_text(primary: str, candidate: str, out: Collector) -> str | None:
    """One difference at path "" when any line differs; returns the excerpt, if any."""
    if primary == candidate:
        return None
    # Lines end at CR, LF or CRLF only: str.splitlines would also split at form feeds,
    # separators and U+2028, which are content.
    normal_a, normal_b = _newlines(primary), _newlines(candidate)
    if normal_a == normal_b:
        out.note("line_endings_differ")
        return None
    lines_a, lines_b = _lines(normal_a), _lines(normal_b)
    if lines_a == lines_b:
        out.note("final_newline_differs")
        return None
    first = next(
        (i for i, (a, b) in enumerate(zip(lines_a, lines_b, strict=False)) if a != b),
        min(len(lines_a), len(lines_b)),
    )
    out.add(Where.BODY, "", Kind.CHANGED, _summary(lines_a, first), _summary(lines_b, first))
    return excerpt(lines_a, lines_b, first)
