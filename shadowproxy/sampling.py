"""The sampling decision: pure, cheap, made once per request before anything is sent.

`Sampler` compiles ``mirror.rules`` once per config. Per request it finds the first rule whose
pattern and conditions fit, then checks, in order: the rule turns mirroring off (``rule``),
the method is not mirrored (``method``), the request falls outside the sample (``sampling``),
the body is too large (``body_size``). The `Decision` of a mirrored request carries the rule's
changes for the candidate's copy (`CandidateEdit`).

With ``mirror.sticky_key`` the sample is a pure function of the key's value: `bucket` maps it
to [0, 1) with BLAKE2b, and a request is in when ``bucket(key) < rate``. The same client gets
the same answer in every process, and raising the rate only ever adds clients.
"""

from __future__ import annotations

import enum
import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from multidict import CIMultiDict, MultiMapping

from shadowproxy.config import MirrorConfig, MirrorRule
from shadowproxy.endpoints import EndpointPattern, normal_path


class SkipReason(enum.StrEnum):
    """Why a request was not mirrored; each one is a metrics label."""

    SAMPLING = "sampling"
    RULE = "rule"
    """A rule of ``mirror.rules`` with ``mirror: false`` matched."""
    METHOD = "method"
    BODY_SIZE = "body_size"
    IN_FLIGHT = "in_flight"
    RATE_LIMIT = "rate_limit"
    BREAKER = "breaker"
    COMPARE_QUEUE = "compare_queue"
    PRIMARY_FAILED = "primary_failed"
    REQUEST_INCOMPLETE = "request_incomplete"
    """The primary answered before the request body was read in full."""
    CLIENT_ABORTED = "client_aborted"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True, slots=True)
class CandidateEdit:
    """What a rule changes on the candidate's copy of a request (never on the primary's)."""

    prefix_from: str | None = None
    """Normalised without a trailing slash: ``/`` is ``""``, which every path starts with."""
    prefix_to: str = ""
    remove: tuple[str, ...] = ()
    replace: tuple[tuple[str, str], ...] = ()
    append: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, rule: MirrorRule) -> CandidateEdit | None:
        """The edit a rule asks for; None when it changes nothing."""
        if rule.rewrite_prefix is None and rule.headers is None:
            return None
        rewrite, changes = rule.rewrite_prefix, rule.headers
        return cls(
            prefix_from=rewrite.from_.rstrip("/") if rewrite else None,
            prefix_to=rewrite.to.rstrip("/") if rewrite else "",
            remove=tuple(changes.remove) if changes else (),
            replace=tuple(changes.set.items()) if changes else (),
            append=tuple(changes.add.items()) if changes else (),
        )

    def path(self, raw_path: str) -> str:
        """The candidate's path: the prefix replaced where it matches whole segments."""
        prefix = self.prefix_from
        if prefix is None or not raw_path.startswith(prefix):
            return raw_path
        rest = raw_path[len(prefix) :]
        if rest and rest[0] not in "/?":
            return raw_path  # "/v10/x" is not under "/v1"
        rewritten = self.prefix_to + rest
        return rewritten if rewritten.startswith("/") else "/" + rewritten

    def apply_headers(self, headers: CIMultiDict[str]) -> None:
        """Change ``headers`` in place: remove, then set, then add. Pass the candidate's copy."""
        for name in self.remove:
            headers.popall(name, None)
        for name, value in self.replace:
            headers[name] = value
        for name, value in self.append:
            headers.add(name, value)


@dataclass(frozen=True, slots=True)
class Decision:
    mirror: bool
    reason: SkipReason | None = None
    rule: int | None = None
    """Index in ``mirror.rules`` of the rule that decided; None: no rule matched."""
    edit: CandidateEdit | None = None
    """For a mirrored request: what to change on the candidate's copy."""


MIRROR = Decision(mirror=True)


def bucket(value: str) -> float:
    """Where a sticky key's value falls in [0, 1): its BLAKE2b digest read as a fraction.

    Unlike ``hash()`` it is the same in every process, on every machine, in every release.
    """
    digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def query_pairs(query: str) -> dict[str, list[str]]:
    """A raw query string as decoded names and values, repeats kept in order."""
    pairs: dict[str, list[str]] = {}
    for part in query.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.setdefault(unquote_plus(name), []).append(unquote_plus(value))
    return pairs


def cookie_value(headers: MultiMapping[str], name: str) -> str | None:
    """The first value of cookie ``name`` in the request's Cookie headers."""
    for line in headers.getall("Cookie", ()):
        for part in line.split(";"):
            key, sep, value = part.partition("=")
            if sep and key.strip() == name:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                return value
    return None


class _Query:
    """The query of one request, decoded on first use only."""

    __slots__ = ("_pairs", "raw")

    def __init__(self, raw: str) -> None:
        self.raw = raw
        self._pairs: dict[str, list[str]] | None = None

    def values(self, name: str) -> list[str]:
        if self._pairs is None:
            self._pairs = query_pairs(self.raw)
        return self._pairs.get(name, [])


@dataclass(frozen=True, slots=True)
class StickyKey:
    """Where a request's sticky key comes from (``mirror.sticky_key``, validated already)."""

    kind: str
    name: str = ""

    @classmethod
    def parse(cls, text: str) -> StickyKey:
        if text == "client_ip":
            return cls("client_ip")
        kind, _, name = text.partition(":")
        return cls(kind, name)

    def value(self, headers: MultiMapping[str], query: _Query | str, client_ip: str) -> str | None:
        """The key's value for one request; None when the request has none (or it is empty)."""
        if self.kind == "header":
            found = headers.get(self.name)
        elif self.kind == "cookie":
            found = cookie_value(headers, self.name)
        elif self.kind == "query":
            values = (query if isinstance(query, _Query) else _Query(query)).values(self.name)
            found = values[0] if values else None
        else:
            found = client_ip
        return found or None


_NO_HEADERS: MultiMapping[str] = CIMultiDict()


@dataclass(frozen=True, slots=True)
class _Outcomes:
    """The decisions one rule (or the global settings) can give, made once."""

    take: Decision
    skip: dict[SkipReason, Decision]

    @classmethod
    def of(cls, rule: int | None, edit: CandidateEdit | None) -> _Outcomes:
        reasons = (SkipReason.RULE, SkipReason.METHOD, SkipReason.SAMPLING, SkipReason.BODY_SIZE)
        return cls(
            take=Decision(True, rule=rule, edit=edit),
            skip={reason: Decision(False, reason, rule=rule) for reason in reasons},
        )


@dataclass(frozen=True, slots=True)
class _Rule:
    """One rule of ``mirror.rules``, compiled."""

    methods: frozenset[str] | None
    regex: re.Pattern[str]
    headers: tuple[tuple[str, frozenset[str]], ...]
    query: tuple[tuple[str, frozenset[str]], ...]
    mirror: bool
    rate: float
    allow_unsafe: bool
    outcomes: _Outcomes = field(repr=False)

    @classmethod
    def compile(cls, index: int, rule: MirrorRule, default_rate: float) -> _Rule:
        pattern = EndpointPattern.parse(rule.match)
        when = rule.when
        return cls(
            methods=pattern.methods,
            regex=pattern.regex,
            headers=tuple(
                (name, frozenset(values)) for name, values in (when.header if when else {}).items()
            ),
            query=tuple(
                (name, frozenset(values)) for name, values in (when.query if when else {}).items()
            ),
            mirror=rule.mirror,
            rate=default_rate if rule.sample_rate is None else rule.sample_rate,
            allow_unsafe=rule.allow_unsafe,
            outcomes=_Outcomes.of(index, CandidateEdit.of(rule)),
        )

    def fits(self, method: str, bare_path: str, headers: MultiMapping[str], query: _Query) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.regex.fullmatch(bare_path) is None:
            return False
        for name, accepted in self.headers:
            if not any(value in accepted for value in headers.getall(name, ())):
                return False
        for name, accepted in self.query:
            if not any(value in accepted for value in query.values(name)):
                return False
        return True


class Sampler:
    """Decides, per request, whether a copy goes to the candidate.

    Built once per config (a reload builds a new one); ``decide`` only reads it.
    """

    def __init__(self, config: MirrorConfig, rng: random.Random | None = None) -> None:
        self._methods = frozenset(config.methods)
        self._rate = config.sample_rate
        self._max_body = config.max_body_bytes
        self._random: Callable[[], float] = (rng or random.Random()).random
        self._sticky = StickyKey.parse(config.sticky_key) if config.sticky_key else None
        self._rules = tuple(
            _Rule.compile(index, rule, config.sample_rate)
            for index, rule in enumerate(config.rules)
        )
        self._global = _Outcomes.of(None, None)

    def decide(
        self,
        method: str,
        path: str = "/",
        *,
        headers: MultiMapping[str] = _NO_HEADERS,
        content_length: int | None = None,
        client_ip: str = "",
    ) -> Decision:
        """``path`` is the raw request path with its query; ``headers`` the client's."""
        bare, _, raw_query = path.partition("?")
        bare = normal_path(bare)
        query = _Query(raw_query)
        rule: _Rule | None = None
        if self._rules:
            upper = method.upper()
            for candidate in self._rules:
                if candidate.fits(upper, bare, headers, query):
                    rule = candidate
                    break
        if rule is None:
            outcomes, rate, allowed = self._global, self._rate, method in self._methods
        else:
            if not rule.mirror:
                return rule.outcomes.skip[SkipReason.RULE]
            outcomes, rate = rule.outcomes, rule.rate
            allowed = rule.allow_unsafe or method in self._methods
        if not allowed:
            return outcomes.skip[SkipReason.METHOD]
        if not self._sampled(rate, headers, query, client_ip):
            return outcomes.skip[SkipReason.SAMPLING]
        if content_length is not None and content_length > self._max_body:
            return outcomes.skip[SkipReason.BODY_SIZE]
        return outcomes.take

    def _sampled(
        self, rate: float, headers: MultiMapping[str], query: _Query, client_ip: str
    ) -> bool:
        if rate >= 1.0:
            return True
        if rate <= 0.0:
            return False
        if self._sticky is not None:
            key = self._sticky.value(headers, query, client_ip)
            if key is not None:
                return bucket(key) < rate
        return self._random() < rate
