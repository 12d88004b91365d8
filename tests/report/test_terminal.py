import io

from rich.console import Console

from shadowproxy.report.aggregate import Aggregator
from shadowproxy.report.summary import summarise
from shadowproxy.report.synthetic import difference, exchange_record, generate
from shadowproxy.report.terminal import percent, printable, render_terminal, safe


def rendered(aggregator: Aggregator, width: int = 200, **options: int) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None)
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


def test_where_of_a_difference_is_not_markup_or_control_codes() -> None:
    aggregator = Aggregator()
    where = "b\x1b]8;;http://evil\x1b\\[link=http://evil]x[/link]\x1b[2J"
    aggregator.add(
        exchange_record(outcome="mismatch", differences=[difference("/x", 1, 2, where=where)])
    )
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=True)
    render_terminal(summarise(aggregator), console)
    text = out.getvalue()
    assert "\x1b]8" not in text
    assert "\x1b[2J" not in text
    assert "[link=http://evil]x[/link]" in text


def test_bidi_overrides_are_shown_as_escapes() -> None:
    # U+202E would show "GET /gpj.exe" as "GET /exe.jpg" where bidi is applied.
    assert printable("GET /\u202egpj.exe\u2066") == "GET /\\u202egpj.exe\\u2066"


def test_empty_report() -> None:
    assert "no exchanges to report" in rendered(Aggregator())


def test_percent_precision() -> None:
    assert percent(None) == "-"
    assert percent(1.0) == "100%"
    assert percent(0.97684) == "97.68%"
    assert percent(0.00021) == "0.021%"
    assert percent(0.99991) == "99.991%"
    assert percent(0.9999996) == "99.999%"  # never 100% unless all matched
    assert percent(999_999 / 1_000_000) == "99.999%"
    assert safe("a\nb").plain == "a\\nb"


def test_a_match_rate_just_below_1_is_not_shown_as_100_percent() -> None:
    aggregator = Aggregator()
    aggregator.add(exchange_record(outcome="mismatch", differences=[difference("/x", 1, 2)]))
    stats = aggregator.endpoints["GET /users/{id}"]
    stats.compared += 2_999_999  # 1 mismatch in 3 million
    stats.matches += 2_999_999
    text = rendered(aggregator)
    assert "100.000%" not in text
    assert "99.999%" in text


def test_figures_are_never_cut_on_a_narrow_terminal() -> None:
    aggregator = Aggregator()
    for _ in range(123_456):
        aggregator.add(exchange_record(endpoint="GET /a/rather/long/endpoint/name/of/a/route"))
    aggregator.add(exchange_record(endpoint="GET /x", outcome="mismatch"))
    for width in (80, 100, 120):
        text = rendered(aggregator, width=width)
        assert "123,457" in text  # the overall count, whole
        assert "123,456" in text
        assert "…" not in text.split("Endpoints, worst first", 1)[1].split("GET /x", 1)[0]
        assert "p99" in text  # its ratio, at least, is kept
    assert "p50 ms" in rendered(aggregator, width=130)
