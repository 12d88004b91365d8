import re
from html.parser import HTMLParser
from typing import Any

import orjson

from shadowproxy.report.aggregate import Aggregator
from shadowproxy.report.html import embed_json, render_html
from shadowproxy.report.jsonout import to_dict
from shadowproxy.report.summary import Summary, summarise
from shadowproxy.report.synthetic import difference, exchange_record, generate

ATTACK = '</script><script>window.pwned=1</script><img src=x onerror="window.pwned=2"><!--'


class Elements(HTMLParser):
    """Every start tag as the browser's tokenizer would see it, with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.data: dict[str, str] = {}
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in = dict(attrs).get("id")

    def handle_data(self, data: str) -> None:
        if self._in:
            self.data[self._in] = self.data.get(self._in, "") + data

    def handle_endtag(self, tag: str) -> None:
        self._in = None


def hostile_summary() -> Summary:
    aggregator = Aggregator()
    aggregator.add(
        exchange_record(
            endpoint=f"GET /x{ATTACK}",
            path=f"/x{ATTACK}?q=<b>",
            outcome="mismatch",
            differences=[difference(f"/{ATTACK}", ATTACK, {"k": ATTACK}, where="body")],
        )
    )
    return summarise(aggregator, sources=[f"logs/{ATTACK}.jsonl"])


def parse(page: str) -> Elements:
    elements = Elements()
    elements.feed(page)
    return elements


def test_logged_markup_stays_data() -> None:
    summary = hostile_summary()
    page = render_html(summary)
    elements = parse(page)
    scripts = [attrs for tag, attrs in elements.tags if tag == "script"]
    assert len(scripts) == 2
    assert scripts[0] == {"id": "report-data", "type": "application/json"}
    assert not any(tag == "img" for tag, _ in elements.tags)
    assert "pwned" not in page.replace("\\u003c", "<").split("report-data", 1)[0]
    assert "<script>window" not in page
    assert "<!--" not in page
    # The embedded JSON still says exactly what the log said.
    embedded: dict[str, Any] = orjson.loads(elements.data["report-data"])
    expected = to_dict(summary)
    assert embedded["input"] == expected["input"]
    assert embedded["endpoints"][0]["endpoint"] == f"GET /x{ATTACK}"
    shown = embedded["endpoints"][0]["examples"][0]["differences"][0]
    assert shown["primary"] == ATTACK
    assert shown["candidate_text"] == orjson.dumps({"k": ATTACK}).decode()


def test_value_texts_keep_number_types() -> None:
    aggregator = Aggregator()
    aggregator.add(
        exchange_record(outcome="mismatch", differences=[difference("/n", 1, 1.0, kind="type")])
    )
    page = render_html(summarise(aggregator))
    embedded = orjson.loads(parse(page).data["report-data"])
    path = embedded["endpoints"][0]["paths"][0]["example"]
    assert (path["primary_text"], path["candidate_text"]) == ("1", "1.0")


def test_embed_json_escapes_what_could_end_the_element() -> None:
    text = embed_json(orjson.dumps({"a": "</script>&<!--\u2028"}))
    assert "<" not in text
    assert ">" not in text
    assert "&" not in text
    assert orjson.loads(text) == {"a": "</script>&<!--\u2028"}


def test_page_is_self_contained_with_a_strict_policy() -> None:
    aggregator = Aggregator()
    for record in generate(2000, seed=2):
        aggregator.add(record)
    page = render_html(summarise(aggregator))
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page
    policy = re.search(r'Content-Security-Policy" content="([^"]+)"', page)
    assert policy is not None
    assert "default-src 'none'" in policy.group(1)
    nonce = re.search(r"script-src 'nonce-([^']+)'", policy.group(1))
    assert nonce is not None
    assert f'<script nonce="{nonce.group(1)}">' in page
    assert "data-refresh" not in page
    assert 'http-equiv="refresh"' not in page


def test_refresh_for_the_live_view() -> None:
    page = render_html(summarise(Aggregator()), refresh_seconds=5)
    assert '<body data-refresh="5">' in page
    assert '<noscript><meta http-equiv="refresh" content="5"></noscript>' in page
    assert render_html(summarise(Aggregator()), refresh_seconds=None).count("data-refresh") == 0


def test_each_page_gets_a_fresh_nonce() -> None:
    summary = summarise(Aggregator())
    first, second = render_html(summary), render_html(summary)
    nonce = re.compile(r"'nonce-([^']+)'")
    assert nonce.findall(first)[0] != nonce.findall(second)[0]
