"""Config of traffic control: mirror rules, sticky sampling, the rate limit and the breaker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shadowproxy.compare import RuleBook
from shadowproxy.config import ConfigError, load_config, parse_config

MINIMAL = {"primary": {"url": "http://127.0.0.1:1"}, "candidate": {"url": "http://127.0.0.1:2"}}


def mirror(**values: Any) -> dict[str, Any]:
    return {**MINIMAL, "mirror": values}


def error_of(data: object) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return str(caught.value)


def test_defaults_change_nothing() -> None:
    config = parse_config(MINIMAL)
    assert config.mirror.rules == []
    assert config.mirror.sticky_key is None
    assert config.mirror.max_rps is None
    assert config.mirror.breaker is None
    assert config.effective_diff() is config.diff


def test_a_full_rule_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        """
primary: {url: "http://127.0.0.1:1"}
candidate: {url: "http://127.0.0.1:2"}
mirror:
  sticky_key: header:X-User-Id
  max_rps: 50
  breaker: {failures: 5, pause: 30}
  rules:
    - match: POST /tenants/test/**
      when: {header: {X-Tenant: test}, query: {v: [1, 2]}}
      allow_unsafe: true
      sample_rate: 0.5
      rewrite_prefix: {from: /v1, to: /v2}
      headers: {set: {X-Tenant: test}, add: {X-Tag: shadow}, remove: [Authorization]}
    - match: /static/*
      mirror: false
""",
        encoding="utf-8",
    )
    config = load_config(path)
    rule = config.mirror.rules[0]
    assert rule.when is not None
    assert rule.when.query == {"v": ["1", "2"]}
    assert rule.when.header == {"X-Tenant": ["test"]}
    assert rule.rewrite_prefix is not None
    assert (rule.rewrite_prefix.from_, rule.rewrite_prefix.to) == ("/v1", "/v2")
    assert config.mirror.breaker is not None
    assert (config.mirror.breaker.failures, config.mirror.breaker.pause) == (5, 30)
    assert config.mirror.rules[1].mirror is False
    # The config served by the admin listener and hashed for the digest uses the file's keys.
    assert config.redacted()["mirror"]["rules"][0]["rewrite_prefix"] == {"from": "/v1", "to": "/v2"}
    assert parse_config(config.model_dump(mode="json")) == config


def test_empty_breaker_takes_the_defaults() -> None:
    breaker = parse_config(mirror(breaker={})).mirror.breaker
    assert breaker is not None
    assert (breaker.failures, breaker.pause) == (5, 30.0)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"rules": [{"match": "/x", "sample_rate": 1.5}]},
            "mirror.rules[0].sample_rate: must be between 0 and 1",
        ),
        (
            {"rules": [{"match": "/a"}, {"match": "/x", "sample_rate": -0.1}]},
            "mirror.rules[1].sample_rate: must be between 0 and 1",
        ),
        ({"rules": [{"match": "users"}]}, 'mirror.rules[0].match: endpoint pattern "users"'),
        (
            {"rules": [{"match": "FETCH /x"}]},
            "mirror.rules[0].match: unknown HTTP method(s): FETCH",
        ),
        ({"rules": [{"sample_rate": 0.5}]}, "mirror.rules[0].match: required key is missing"),
        ({"rules": [{"match": "/x", "mirorr": False}]}, "mirror.rules[0].mirorr: unknown key"),
        (
            {"rules": [{"match": "/x", "allow_unsafe": True}]},
            "mirror.rules[0].allow_unsafe: the match must name its methods",
        ),
        (
            {"rules": [{"match": "POST /orders"}]},
            "mirror.rules[0].match: POST is not in mirror.methods, so this rule would never "
            "mirror; set allow_unsafe: true",
        ),
        (
            {"rules": [{"match": "/x", "when": {"header": {"X-A": "1"}}, "diff": {"ignore": []}}]},
            "mirror.rules[0].diff: cannot be combined with when",
        ),
        (
            {"rules": [{"match": "/x", "when": {"header": {"Bad Name": "1"}}}]},
            'mirror.rules[0].when.header.Bad Name: "Bad Name" is not a valid header name',
        ),
        (
            {"rules": [{"match": "/x", "when": {"header": {"X-A": True}}}]},
            "mirror.rules[0].when.header.X-A[0]: must be text: quote true",
        ),
        (
            {"rules": [{"match": "/x", "when": {"query": {"v": []}}}]},
            "mirror.rules[0].when.query.v: must name at least one accepted value",
        ),
        (
            {"rules": [{"match": "/x", "when": {"cookie": {"a": "1"}}}]},
            "mirror.rules[0].when.cookie: unknown key",
        ),
        (
            {"rules": [{"match": "/x", "headers": {"remove": ["Content-Length"]}}]},
            'mirror.rules[0].headers: cannot change "Content-Length"',
        ),
        (
            {"rules": [{"match": "/x", "headers": {"set": {"X-Shadow-Request": "0"}}}]},
            'mirror.rules[0].headers: cannot change "X-Shadow-Request"',
        ),
        (
            {"rules": [{"match": "/x", "headers": {"add": {"X-A": "a\r\nB: c"}}}]},
            "mirror.rules[0].headers.add.X-A: must not contain line breaks",
        ),
        (
            {"rules": [{"match": "/x", "rewrite_prefix": {"from": "v1", "to": "/v2"}}]},
            'mirror.rules[0].rewrite_prefix.from: path prefix "v1" must start with "/"',
        ),
        (
            {"rules": [{"match": "/x", "rewrite_prefix": {"from": "/v1?a", "to": "/v2"}}]},
            "mirror.rules[0].rewrite_prefix.from: path prefix",
        ),
        (
            {"rules": [{"match": "/x", "rewrite_prefix": {"from": "/v1"}}]},
            "mirror.rules[0].rewrite_prefix.to: required key is missing",
        ),
        ({"sticky_key": "user"}, 'mirror.sticky_key: must be "header:NAME", "cookie:NAME"'),
        ({"sticky_key": "header:"}, "mirror.sticky_key: must be"),
        ({"sticky_key": "body:id"}, "mirror.sticky_key: must be"),
        ({"sticky_key": "cookie:a b"}, 'mirror.sticky_key: "a b" is not a valid cookie name'),
        ({"max_rps": 0}, "mirror.max_rps: must be greater than 0"),
        ({"max_rps": "fast"}, "mirror.max_rps:"),
        ({"breaker": {"failures": 0}}, "mirror.breaker.failures: input should be greater"),
        ({"breaker": {"pause": 0}}, "mirror.breaker.pause: must be greater than 0"),
        ({"breaker": {"failure": 3}}, "mirror.breaker.failure: unknown key"),
    ],
)
def test_bad_values_name_their_key(values: dict[str, Any], expected: str) -> None:
    assert expected in error_of(mirror(**values))


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("header:X-User-Id", "header:X-User-Id"),
        (" header: X-User-Id ", "header:X-User-Id"),
        ("cookie:session", "cookie:session"),
        ("query:user", "query:user"),
        ("client_ip", "client_ip"),
    ],
)
def test_sticky_key_forms(text: str, normalised: str) -> None:
    assert parse_config(mirror(sticky_key=text)).mirror.sticky_key == normalised


def test_rules_that_are_fine() -> None:
    config = parse_config(
        mirror(
            methods=["GET", "POST"],
            rules=[
                {"match": "POST /orders"},  # POST is mirrored globally here
                {"match": "POST /carts/**", "mirror": False},  # off needs no allow_unsafe
                {"match": "DELETE /carts/*", "allow_unsafe": True, "mirror": False},
                {"match": "ANY /x", "sample_rate": 0},
                {"match": "/y", "when": {"header": {"X-A": ["1", 2]}, "query": {"q": ""}}},
            ],
        )
    )
    assert len(config.mirror.rules) == 5


def test_rule_diffs_become_endpoint_rules_before_the_users_own() -> None:
    config = parse_config(
        {
            **MINIMAL,
            "mirror": {
                "rules": [
                    {"match": "GET /users/{id}", "diff": {"ignore": ["/updated"], "tolerance": 1}},
                    {"match": "/static/*", "mirror": False},
                    {"match": "/users/**", "diff": {"ignore_headers": ["X-Trace"]}},
                ]
            },
            "diff": {"endpoints": [{"match": "/users/**", "tolerance": "5%"}]},
        }
    )
    diff = config.effective_diff()
    assert [e.match for e in diff.endpoints] == ["GET /users/{id}", "/users/**", "/users/**"]
    assert diff.endpoints[0].ignore == ["/updated"]
    assert diff.endpoints[1].ignore_headers == ["x-trace"]
    assert config.diff.endpoints == diff.endpoints[2:]  # the config itself is left as written
    # The comparison engine takes it as is.
    book = RuleBook.from_config(diff)
    rules = book.for_endpoint("GET /users/{id}")
    assert "x-trace" in rules.ignore_headers
    assert rules.tolerance is not None
    assert rules.tolerance.relative == 0.05  # diff.endpoints come later and win for scalars
    assert book.for_endpoint("GET /orders/{id}").tolerance is None
