"""The HTML report: one self-contained page, for a file or for the admin's live ``/report``.

The report data is embedded as JSON in ``<script type="application/json">`` with every ``<``,
``>`` and ``&`` escaped as a JSON unicode escape, so no logged value can close the element or
open markup; the inline script builds the page from it with ``textContent`` only. A Content
Security Policy with a fresh nonce allows only the page's own script and style, and no network.
"""

from __future__ import annotations

import secrets
from html import escape
from typing import Any

import orjson

from shadowproxy.report.html_assets import CSS, JS
from shadowproxy.report.jsonout import to_dict
from shadowproxy.report.summary import Summary

DEFAULT_TITLE = "shadowproxy report"
_JSON_ESCAPES = {
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def embed_json(payload: bytes) -> str:
    """JSON text that is inert inside a ``<script>`` element and parses to the same value."""
    return payload.decode("utf-8").translate(_JSON_ESCAPES)


def _add_value_texts(difference: dict[str, Any]) -> None:
    # JavaScript reads 1.0 as 1, which would hide exactly the "type" differences; the JSON
    # text written here keeps what the log said.
    for side in ("primary", "candidate"):
        if side in difference:
            difference[f"{side}_text"] = orjson.dumps(difference[side]).decode()


def page_data(summary: Summary) -> bytes:
    """The summary's JSON, with each example value also as the JSON text the log had."""
    data = to_dict(summary)
    for report in data["endpoints"]:
        for path in (*report["paths"], *report["noise_paths"]):
            if path["example"]:
                _add_value_texts(path["example"])
        for example in report["examples"]:
            for difference in example["differences"]:
                _add_value_texts(difference)
    return orjson.dumps(data)


def render_html(
    summary: Summary, refresh_seconds: int | None = None, *, title: str = DEFAULT_TITLE
) -> str:
    """The page; with ``refresh_seconds`` it reloads itself, keeping open panels and scroll."""
    nonce = secrets.token_urlsafe(16)
    policy = (
        "default-src 'none'; "
        f"script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )
    refresh = ""
    if refresh_seconds is not None and refresh_seconds > 0:
        refresh = f' data-refresh="{int(refresh_seconds)}"'
        noscript = (
            f'<noscript><meta http-equiv="refresh" content="{int(refresh_seconds)}"></noscript>'
        )
    else:
        noscript = ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{escape(policy, quote=False)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="shadowproxy">
{noscript}
<title>{escape(title)}</title>
<style nonce="{nonce}">{CSS}</style>
</head>
<body{refresh}>
<main id="report"><p>This report needs JavaScript to draw its tables and charts.</p></main>
<script id="report-data" type="application/json">{embed_json(page_data(summary))}</script>
<script nonce="{nonce}">{JS}</script>
</body>
</html>
"""
