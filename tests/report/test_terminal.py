import io

from rich.console import Console

from shadowproxy.report.aggregate import Aggregator
from shadowproxy.report.summary import summarise
from shadowproxy.report.synthetic import difference, exchange_record, generate
from shadowproxy.report.terminal import percent, render_terminal, safe


def rendered(aggregator: Aggregator, **options: int) -> str:
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    render_terminal(summarise(aggregator, sources=["x.jsonl"]), console, **options)
    return out.getvalue()


def test_table_lists_endpoints_paths_and_status_pairs() -> None:
    aggregator = Aggregator()
    for record in generate(5000, seed=3):
        aggregator.add(record)
    text = rendered(aggregator)
    assert "Endpoints, worst first" in text
    assert "GET /search" in text
    assert "/items/*/price" in text
    assert "200 -> 500: " in text
    assert "overall" in text
    assert text.index("GET /search") < text.index("GET /products ")


def test_logged_values_are_not_markup_or_control_codes() -> None:
    aggregator = Aggregator()
    aggregator.add(
        exchange_record(
            endpoint="GET /[bold red]boom[/]",
            outcome="mismatch",
            differences=[difference("/x", "\x1b[2J", "[link=http://evil]y[/link]")],
        )
    )
    text = rendered(aggregator)
    assert "GET /[bold red]boom[/]" in text
    assert "\x1b" not in text
    assert "\\u001b[2J" in text
    assert "[link=http://evil]y" in text


def test_empty_report() -> None:
    assert "no exchanges to report" in rendered(Aggregator())


def test_percent_precision() -> None:
    assert percent(None) == "-"
    assert percent(1.0) == "100%"
    assert percent(0.97684) == "97.68%"
    assert percent(0.00021) == "0.021%"
    assert percent(0.99991) == "99.991%"
    assert safe("a\nb").plain == "a\\nb"
