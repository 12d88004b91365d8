"""``shadowproxy suggest-ignores LOG...``: ignore rules for differences that look like noise.

Reads discrepancy logs (the same reader as ``report``) and proposes, per endpoint, the body
places and headers that differ in nearly every compared exchange with values that look
generated: UUIDs, timestamps, trace ids, other ids. The output is YAML to paste under
``diff.endpoints``, each rule preceded by its evidence as comments.

A place is proposed when all of these hold, for an endpoint with at least ``min_samples``
compared exchanges (outcome match or mismatch; candidate errors have no differences):

1. it differed in at least ``min_share`` of them (array indices generalised to ``*``);
2. every one of its differences is a changed value of the same JSON type: a member added,
   removed or changing type even once is structural, hence real;
3. no difference changed the value's shape (UUID, ISO 8601 or HTTP timestamp, epoch number,
   long hex, ULID, W3C traceparent; a timestamp's format counts): a changed format, even once,
   is real;
4. its values look generated: at least ``min_share`` of the differences have the same shape on
   both sides, or its values are strings and at least ``min_distinct`` of the sampled primary
   values are distinct;
5. both sides' values vary, each at least half as much as the other's (sampled alike): a
   candidate answering one constant where the primary generates values is broken, and a
   candidate generating values where the primary answers one constant (a fixed creation
   time) changed what the field means;
6. repeated identical requests (the same method and path with query) do not show a stable
   primary value: a value that is the same each time the same request is made is data, and
   the candidate changing it is a regression.

Whole text or binary bodies (path "") and status codes are never proposed. Everything stays
bounded (endpoints, places per endpoint, sampled values); what does not fit is left out.

Exit status: 0 (also when there is nothing to propose, which the output says in a comment),
2 when a log cannot be read or an option is wrong. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import yaml

from shadowproxy import argtypes
from shadowproxy.report.aggregate import EXCHANGE_EVENT, InputCounts, generalise_path
from shadowproxy.report.filters import RecordFilter, endpoint_matches
from shadowproxy.report.read import TRUNCATED, ReportInputError, read_into
from shadowproxy.report.timestamps import parse_when

EXIT_OK = 0
EXIT_INPUT = 2

DEFAULT_MIN_SHARE = 0.9
DEFAULT_MIN_DISTINCT = 0.9
DEFAULT_MIN_SAMPLES = 20

MAX_ENDPOINTS = 300
MAX_PLACES = 200
"""Places tracked per endpoint, first come, first kept."""
VALUE_SAMPLE = 64
"""Primary values kept per place to judge how many are distinct (the first ones seen)."""
REPEAT_SAMPLE = 32
"""Identical requests remembered per place to see whether a value is stable across them."""
MAX_OTHERS_SHOWN = 5
"""Other logged endpoints a proposed match would cover, named in its comment."""
MIN_REPEATS = 3
"""Repeated requests needed before their stability can veto a proposal."""
EXAMPLE_CHARS = 60
MAX_PLACE_CHARS = 512

BODY, HEADER = "body", "header"
COMPARED_OUTCOMES = frozenset({"match", "mismatch"})

_HEX = "0-9a-fA-F"
_MONTHS = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
_UUID = re.compile(rf"[{_HEX}]{{8}}-[{_HEX}]{{4}}-[{_HEX}]{{4}}-[{_HEX}]{{4}}-[{_HEX}]{{12}}")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_ISO_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[Tt ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:[Zz]|[+-]\d{2}(?::?\d{2})?)?)?"
)
_HTTP_DATE = re.compile(
    rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{{2}} (?:{_MONTHS}) \d{{4}} \d{{2}}:\d{{2}}:\d{{2}} GMT"
)
_ULID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")
_LONG_HEX = re.compile(rf"[{_HEX}]{{16,}}")
_DIGITS = re.compile(r"\d+")
_EPOCH_UNITS = ((1e9, 1e10, "s"), (1e12, 1e13, "ms"), (1e15, 1e16, "us"), (1e18, 1e19, "ns"))


def shape(value: Any) -> str | None:
    """The generated-value shape of ``value`` with its format (``uuid:lower``,
    ``timestamp:9-9-9T9:9:9.9Z``, ``epoch:ms``), or None when it has none."""
    if type(value) is str:
        if len(value) > 200:
            return None
        if _UUID.fullmatch(value):
            return "uuid:upper" if value.upper() == value else "uuid:lower"
        if _TRACEPARENT.fullmatch(value):
            return "traceparent"
        if _ISO_TIME.fullmatch(value):
            return "timestamp:" + _DIGITS.sub("9", value)
        if _HTTP_DATE.fullmatch(value):
            return "http-date"
        if _ULID.fullmatch(value):
            return "ulid"
        if _LONG_HEX.fullmatch(value):
            return f"hex:{len(value)}"
        if value.isdigit() and len(value) in (10, 13):
            return f"epoch-text:{len(value)}"
        return None
    if type(value) is int or type(value) is float:
        magnitude = abs(value)
        for low, high, unit in _EPOCH_UNITS:
            if low <= magnitude < high:
                return f"epoch:{unit}"
    return None


def _shape_name(signature: str) -> str:
    name = signature.partition(":")[0]
    return {"epoch-text": "epoch", "hex": "long hex"}.get(name, name)


def _value_key(value: Any) -> Any:
    if value is None or type(value) in (str, int, float, bool):
        return (type(value).__name__, value)
    try:
        return ("json", orjson.dumps(value, option=orjson.OPT_SORT_KEYS))
    except (TypeError, orjson.JSONEncodeError):
        return ("repr", repr(value))


def _number(value: Any) -> bool:
    return type(value) is int or type(value) is float


@dataclass(slots=True)
class PlaceEvidence:
    """What was seen at one place of one endpoint."""

    where: str
    path: str
    exchanges: int = 0
    occurrences: int = 0
    as_noise: int = 0
    """Occurrences the proxy already logged as noise (with a secondary)."""
    same_type_changes: int = 0
    structural: int = 0
    """Members added or removed, or values changing type: never noise."""
    format_changes: int = 0
    """Values whose shape changed (a date format): never noise."""
    same_shape: int = 0
    plain_strings: int = 0
    """Changed strings with no known shape on either side (a changed format has one)."""
    shapes: dict[str, int] = field(default_factory=dict)
    distinct: set[Any] = field(default_factory=set)
    varied_primary: set[Any] = field(default_factory=set)
    varied_candidate: set[Any] = field(default_factory=set)
    """Distinct values of each side, over every difference, up to ``VALUE_SAMPLE`` each: the
    first ones alone may all fall in the same second."""
    sampled: int = 0
    requests: dict[tuple[str, str], Any] = field(default_factory=dict)
    repeats: int = 0
    repeat_changes: int = 0
    example: tuple[Any, Any] | None = None

    def add(self, request: str, raw_path: str, kind: Any, primary: Any, candidate: Any) -> None:
        self.occurrences += 1
        if kind == "type" and _number(primary) and _number(candidate):
            # A float epoch that happens to be whole (1.5 against 2) is the same field.
            primary, candidate = float(primary), float(candidate)
        elif kind != "changed" or primary is None or type(primary) is not type(candidate):
            self.structural += 1
            return
        self.same_type_changes += 1
        signature = shape(primary)
        other = shape(candidate)
        if signature is not None and signature == other:
            self.same_shape += 1
            self.shapes[signature] = self.shapes.get(signature, 0) + 1
        elif signature is None and other is None:
            if type(primary) is str:
                self.plain_strings += 1
        else:
            self.format_changes += 1
            return
        if self.example is None:  # only a difference that could be noise stands for it
            self.example = (primary, candidate)
        key = _value_key(primary)
        if self.sampled < VALUE_SAMPLE:
            self.sampled += 1
            self.distinct.add(key)
        if len(self.varied_primary) < VALUE_SAMPLE:
            self.varied_primary.add(key)
        if len(self.varied_candidate) < VALUE_SAMPLE:
            self.varied_candidate.add(_value_key(candidate))
        if request:
            seen = (request, raw_path)
            if seen in self.requests:
                self.repeats += 1
                if self.requests[seen] != key:
                    self.repeat_changes += 1
            elif len(self.requests) < REPEAT_SAMPLE:
                self.requests[seen] = key

    @property
    def distinct_share(self) -> float:
        return len(self.distinct) / self.sampled if self.sampled else 0.0

    @property
    def both_vary(self) -> bool:
        """Each side's values vary at least half as much as the other's: noise is generated by
        the primary's version as much as by the candidate's."""
        fewer, more = sorted((len(self.varied_primary), len(self.varied_candidate)))
        return fewer > 1 and 2 * fewer >= more

    @property
    def main_shape(self) -> str | None:
        if not self.shapes:
            return None
        return _shape_name(max(self.shapes.items(), key=lambda item: item[1])[0])


@dataclass(slots=True)
class EndpointEvidence:
    compared: int = 0
    places: dict[tuple[str, str], PlaceEvidence] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Thresholds:
    min_share: float = DEFAULT_MIN_SHARE
    min_distinct: float = DEFAULT_MIN_DISTINCT
    min_samples: int = DEFAULT_MIN_SAMPLES


@dataclass(frozen=True, slots=True)
class Suggestion:
    endpoint: str
    compared: int
    place: PlaceEvidence
    reason: str


class Collector:
    """Feeds on log records (a ``RecordSink`` for ``read_into``) and keeps bounded evidence."""

    def __init__(self) -> None:
        self.counts = InputCounts()
        self.endpoints: dict[str, EndpointEvidence] = {}
        self.exchanges = 0
        self.untracked = 0

    def add(self, record: Mapping[str, Any], /) -> bool:
        if record.get("event") != EXCHANGE_EVENT:
            self.counts.other_events += 1
            return False
        endpoint = record.get("endpoint")
        outcome = record.get("outcome")
        if type(endpoint) is not str or type(outcome) is not str:
            self.counts.invalid += 1
            return False
        if outcome not in COMPARED_OUTCOMES:
            return True
        stats = self.endpoints.get(endpoint)
        if stats is None:
            if len(self.endpoints) >= MAX_ENDPOINTS:
                self.untracked += 1
                return True
            stats = self.endpoints[endpoint] = EndpointEvidence()
        stats.compared += 1
        self.exchanges += 1
        request = record.get("path")
        request = f"{record.get('method')} {request}" if type(request) is str else ""
        seen: set[tuple[str, str]] = set()
        for field_name in ("differences", "noise"):
            items = record.get(field_name)
            if type(items) is not list:
                continue
            for item in items:
                if type(item) is dict:
                    self._add(stats, seen, request, item, as_noise=field_name == "noise")
        return True

    def _add(
        self,
        stats: EndpointEvidence,
        seen: set[tuple[str, str]],
        request: str,
        item: dict[str, Any],
        *,
        as_noise: bool,
    ) -> None:
        where = item.get("where")
        raw = item.get("path")
        if where not in (BODY, HEADER) or type(raw) is not str or len(raw) > MAX_PLACE_CHARS:
            return
        if where == BODY and raw == "":
            return  # a whole text or binary body: never ignorable as a place
        place = (where, generalise_path(raw) if where == BODY else raw.lower())
        evidence = stats.places.get(place)
        if evidence is None:
            if len(stats.places) >= MAX_PLACES:
                self.untracked += 1
                return
            evidence = stats.places[place] = PlaceEvidence(*place)
        if place not in seen:
            seen.add(place)
            evidence.exchanges += 1
        if as_noise:
            evidence.as_noise += 1
        evidence.add(request, raw, item.get("kind"), item.get("primary"), item.get("candidate"))

    def suggestions(self, thresholds: Thresholds) -> list[Suggestion]:
        """Proposals in endpoint order, each endpoint's most frequent places first."""
        found: list[Suggestion] = []
        for endpoint in sorted(self.endpoints):
            stats = self.endpoints[endpoint]
            if stats.compared < thresholds.min_samples:
                continue
            if not endpoint.partition(" ")[2].startswith("/"):
                continue  # OPTIONS *: no rule can name it
            places = sorted(stats.places.values(), key=lambda p: (-p.exchanges, p.where, p.path))
            for place in places:
                reason = _judge(place, stats.compared, thresholds)
                if reason is not None:
                    found.append(Suggestion(endpoint, stats.compared, place, reason))
        return found


def _judge(place: PlaceEvidence, compared: int, thresholds: Thresholds) -> str | None:
    """Why the place looks like noise, or None when it does not."""
    share = thresholds.min_share
    if place.exchanges < share * compared or not place.occurrences:
        return None
    if place.structural or place.format_changes or not place.both_vary:
        return None
    if place.same_type_changes < share * place.occurrences:
        return None
    if place.repeats >= MIN_REPEATS and place.repeat_changes < 0.5 * place.repeats:
        return None
    if place.same_shape >= share * place.occurrences:
        return f"{place.main_shape} values"
    if place.plain_strings >= share * place.occurrences and place.distinct_share >= (
        thresholds.min_distinct
    ):
        return "distinct string values"
    return None


# --- output ---------------------------------------------------------------------------------


def quote(text: str) -> str:
    """``text`` as a YAML double-quoted scalar on one line, whatever it holds."""
    dumped: str = yaml.safe_dump(text, default_style='"', allow_unicode=True, width=1 << 30)
    return dumped.rstrip("\n")


def _example(value: Any) -> str:
    if type(value) is str:
        text = value if len(value) <= EXAMPLE_CHARS else value[:EXAMPLE_CHARS] + "…"
        return quote(text)
    try:
        text = orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        text = repr(value)
    return quote(text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + "…")[1:-1]


def _evidence(suggestion: Suggestion) -> list[str]:
    place = suggestion.place
    compared = suggestion.compared
    line = (
        f"differed in {place.exchanges:,} of {compared:,} compared exchanges "
        f"({place.exchanges / compared:.0%}); {suggestion.reason}"
    )
    if place.sampled:
        line += f", {len(place.distinct)} distinct among the first {place.sampled}"
    if place.as_noise:
        line += f"; {place.as_noise:,} already logged as noise"
    lines = [line]
    if place.example is not None:
        primary, candidate = place.example
        lines.append(f"e.g. primary {_example(primary)}, candidate {_example(candidate)}")
    return lines


def render(collector: Collector, thresholds: Thresholds, sources: Sequence[str]) -> str:
    """The YAML text: a header comment, then one ``diff.endpoints`` entry per endpoint."""
    found = collector.suggestions(thresholds)
    names = ", ".join(sources)
    endpoints = len(collector.endpoints)
    out = [
        f"# shadowproxy suggest-ignores over {collector.exchanges:,} compared exchanges of "
        f"{endpoints:,} endpoint(s) in: {names}",
    ]
    if not found:
        out.append(
            f"# Nothing to suggest: no place differed in {thresholds.min_share:.0%} or more of "
            f"the compared exchanges of an endpoint with at least {thresholds.min_samples} "
            "of them, with values that look generated."
        )
        return "\n".join(out) + "\n"
    out += [
        f"# {len(found)} place(s) that differed in {thresholds.min_share:.0%} or more of an "
        "endpoint's compared exchanges,",
        "# with values that look generated (ids, UUIDs, times). Review them, then add these",
        "# entries under diff.endpoints in the config (merge an entry into one that already has",
        "# the same match).",
    ]
    by_endpoint: dict[str, list[Suggestion]] = {}
    for suggestion in found:
        by_endpoint.setdefault(suggestion.endpoint, []).append(suggestion)
    for endpoint, suggestions in by_endpoint.items():
        # A {placeholder} matches any one segment: the rule reaches sibling routes too.
        others = [
            other
            for other in sorted(collector.endpoints)
            if other != endpoint and endpoint_matches(endpoint, other)
        ]
        if others:
            shown = ", ".join(others[:MAX_OTHERS_SHOWN])
            more = (
                f" and {len(others) - MAX_OTHERS_SHOWN} more"
                if len(others) > MAX_OTHERS_SHOWN
                else ""
            )
            out.append(f"# this match also covers {shown}{more}: narrow it if they differ")
        out.append(f"- match: {quote(endpoint)}")
        for where, key in ((BODY, "ignore"), (HEADER, "ignore_headers")):
            chosen = [s for s in suggestions if s.place.where == where]
            if not chosen:
                continue
            out.append(f"  {key}:")
            for suggestion in chosen:
                out += [f"    # {line}" for line in _evidence(suggestion)]
                out.append(f"    - {quote(suggestion.place.path)}")
    return "\n".join(out) + "\n"


# --- the command ----------------------------------------------------------------------------


def _when(text: str) -> float:
    try:
        return parse_when(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``suggest-ignores`` subcommand."""
    parser = subparsers.add_parser(
        "suggest-ignores",
        help="propose ignore rules for differences that look like noise",
        description="Read discrepancy logs and print YAML for diff.endpoints: ignore rules for "
        "body places and headers that differ in nearly every exchange of an endpoint with "
        "values that look generated (UUIDs, timestamps, ids), each with its evidence.",
    )
    parser.add_argument(
        "logs",
        nargs="+",
        metavar="LOG",
        help="discrepancy logs: files, globs, .gz/.zst files, or - for stdin",
    )
    parser.add_argument(
        "--min-share",
        type=argtypes.share,
        default=DEFAULT_MIN_SHARE,
        metavar="FRACTION",
        help="share of an endpoint's compared exchanges a place must differ in "
        f"(default {DEFAULT_MIN_SHARE})",
    )
    parser.add_argument(
        "--min-samples",
        type=argtypes.count,
        default=DEFAULT_MIN_SAMPLES,
        metavar="N",
        help=f"compared exchanges an endpoint needs (default {DEFAULT_MIN_SAMPLES})",
    )
    parser.add_argument(
        "--min-distinct",
        type=argtypes.share,
        default=DEFAULT_MIN_DISTINCT,
        metavar="FRACTION",
        help="for strings of no known shape: share of distinct primary values "
        f"(default {DEFAULT_MIN_DISTINCT})",
    )
    parser.add_argument(
        "--since", type=_when, metavar="TIME", help="only exchanges at or after TIME"
    )
    parser.add_argument("--until", type=_when, metavar="TIME", help="only exchanges before TIME")
    parser.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only these endpoints (exact, glob or config pattern); repeatable",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    record_filter = RecordFilter(args.since, args.until, tuple(args.endpoint))
    collector = Collector()
    try:
        read_into(collector, args.logs, record_filter if record_filter.active else None)
    except ReportInputError as error:
        print(f"shadowproxy suggest-ignores: error: {error}", file=sys.stderr)
        return EXIT_INPUT
    counts = collector.counts
    for name in counts.truncated:
        warning = TRUNCATED.format(name=name)
        print(f"shadowproxy suggest-ignores: warning: {warning}", file=sys.stderr)
    if counts.corrupted:
        print(
            f"shadowproxy suggest-ignores: warning: skipped {counts.corrupted:,} line(s) that "
            f"are not JSON objects (first: {counts.first_corrupted})",
            file=sys.stderr,
        )
    thresholds = Thresholds(args.min_share, args.min_distinct, args.min_samples)
    sources = ["stdin" if name == "-" else name for name in args.logs]
    sys.stdout.write(render(collector, thresholds, sources))
    sys.stdout.flush()
    return EXIT_OK
