"""The sampling decision: rules in order, conditions, stickiness, and the candidate's edits."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from shadowproxy.config import MirrorConfig
from shadowproxy.sampling import CandidateEdit, Sampler, SkipReason, bucket, cookie_value

ROOT = Path(__file__).resolve().parent.parent


def sampler(seed: int = 7, **mirror: Any) -> Sampler:
    return Sampler(MirrorConfig.model_validate(mirror), rng=random.Random(seed))


def headers(**pairs: str) -> CIMultiDict[str]:
    return CIMultiDict((name.replace("_", "-"), value) for name, value in pairs.items())


# --- rules ----------------------------------------------------------------------------------


def test_no_rules_keeps_the_global_behaviour() -> None:
    s = sampler()
    assert s.decide("GET", "/a").mirror
    assert s.decide("POST", "/a").reason is SkipReason.METHOD
    assert s.decide("GET", "/a", content_length=9 * 1024 * 1024).reason is SkipReason.BODY_SIZE
    assert s.decide("GET", "/a").rule is None


def test_first_matching_rule_wins() -> None:
    s = sampler(
        rules=[
            {"match": "GET /users/admin", "mirror": False},
            {"match": "GET /users/{id}", "sample_rate": 1.0},
            {"match": "/users/**", "sample_rate": 0.0},
        ]
    )
    assert s.decide("GET", "/users/admin") == s.decide("GET", "/users/admin?x=1")
    assert s.decide("GET", "/users/admin").reason is SkipReason.RULE
    assert s.decide("GET", "/users/admin").rule == 0
    first = s.decide("GET", "/users/42")
    assert first.mirror
    assert first.rule == 1
    deep = s.decide("GET", "/users/42/orders")
    assert (deep.mirror, deep.reason, deep.rule) == (False, SkipReason.SAMPLING, 2)
    # No rule fits: the global settings decide.
    other = s.decide("GET", "/orders")
    assert other.mirror
    assert other.rule is None


def test_mirror_false_wins_over_everything_after_it() -> None:
    s = sampler(
        sample_rate=1.0,
        rules=[{"match": "/static/*", "mirror": False}, {"match": "/**", "sample_rate": 1.0}],
    )
    assert s.decide("GET", "/static/app.js").reason is SkipReason.RULE
    assert s.decide("HEAD", "/static/app.js").reason is SkipReason.RULE
    assert s.decide("GET", "/static/js/app.js").mirror  # "*" is one segment only


@pytest.mark.parametrize("path", ["/%61dmin/x", "//admin/x", "/./admin/x", "/api/../admin/x"])
def test_rules_hold_for_every_spelling_of_a_path(path: str) -> None:
    """A rule keeping /admin from the candidate must not be got round by spelling it another
    way that the primary (and most servers) read as the same path."""
    s = sampler(rules=[{"match": "/admin/**", "mirror": False}])
    assert s.decide("GET", path).reason is SkipReason.RULE


def test_unsafe_methods_only_with_allow_unsafe() -> None:
    s = sampler(
        rules=[
            {"match": "POST /tenants/test/**", "allow_unsafe": True},
            {"match": "GET,POST /orders/**"},
        ]
    )
    assert s.decide("POST", "/tenants/test/orders").mirror
    assert s.decide("GET", "/tenants/test/orders").mirror  # GET is mirrored anyway
    assert s.decide("PUT", "/tenants/test/orders").reason is SkipReason.METHOD
    assert s.decide("POST", "/tenants/prod/orders").reason is SkipReason.METHOD
    # A rule listing POST without allow_unsafe does not open POST up.
    assert s.decide("POST", "/orders/1").reason is SkipReason.METHOD
    assert s.decide("GET", "/orders/1").mirror


def test_rule_methods_and_allow_unsafe_with_global_methods() -> None:
    s = sampler(methods=["GET", "POST"], rules=[{"match": "DELETE /carts/*", "allow_unsafe": True}])
    assert s.decide("POST", "/carts/1").mirror
    assert s.decide("DELETE", "/carts/1").mirror
    assert s.decide("DELETE", "/carts").reason is SkipReason.METHOD


def test_rule_sample_rate_overrides_the_global_one() -> None:
    s = sampler(sample_rate=0.0, rules=[{"match": "/hot/**", "sample_rate": 1.0}])
    assert s.decide("GET", "/hot/1").mirror
    assert s.decide("GET", "/cold/1").reason is SkipReason.SAMPLING


def test_rule_without_sample_rate_inherits_the_global_one() -> None:
    s = sampler(sample_rate=0.0, rules=[{"match": "/x", "headers": {"set": {"A": "b"}}}])
    assert s.decide("GET", "/x").reason is SkipReason.SAMPLING


# --- conditions -----------------------------------------------------------------------------


def test_header_condition_exact_and_case_insensitive_name() -> None:
    s = sampler(
        rules=[
            {"match": "/**", "when": {"header": {"X-Tenant": "test"}}, "sample_rate": 1.0},
            {"match": "/**", "mirror": False},
        ]
    )
    assert s.decide("GET", "/a", headers=headers(x_tenant="test")).mirror
    assert s.decide("GET", "/a", headers=CIMultiDict({"x-TENANT": "test"})).mirror
    assert s.decide("GET", "/a", headers=headers(X_Tenant="Test")).reason is SkipReason.RULE
    assert s.decide("GET", "/a", headers=headers(X_Tenant="test2")).reason is SkipReason.RULE
    assert s.decide("GET", "/a").reason is SkipReason.RULE


def test_condition_with_a_list_of_accepted_values_and_repeated_headers() -> None:
    s = sampler(
        rules=[
            {"match": "/**", "when": {"header": {"X-Tenant": ["test", "qa"]}}},
            {"match": "/**", "mirror": False},
        ]
    )
    assert s.decide("GET", "/", headers=headers(X_Tenant="qa")).mirror
    repeated = CIMultiDict([("X-Tenant", "prod"), ("X-Tenant", "test")])
    assert s.decide("GET", "/", headers=repeated).mirror
    assert not s.decide("GET", "/", headers=headers(X_Tenant="prod")).mirror


def test_query_conditions_are_decoded_and_all_conditions_must_hold() -> None:
    s = sampler(
        rules=[
            {
                "match": "GET /search",
                "when": {"query": {"q": "a b", "lang": ["en", "fr"]}, "header": {"X-A": "1"}},
            },
            {"match": "/**", "mirror": False},
        ]
    )
    a1 = headers(X_A="1")
    assert s.decide("GET", "/search?q=a+b&lang=fr", headers=a1).mirror
    assert s.decide("GET", "/search?lang=en&q=a%20b", headers=a1).mirror
    assert not s.decide("GET", "/search?q=a+b&lang=de", headers=a1).mirror
    assert not s.decide("GET", "/search?q=a+b&lang=en").mirror  # header missing
    assert not s.decide("GET", "/search?q=ab&lang=en", headers=a1).mirror
    assert not s.decide("GET", "/search", headers=a1).mirror


def test_numbers_in_conditions_are_compared_as_text() -> None:
    s = sampler(rules=[{"match": "/**", "when": {"query": {"v": 2}}, "mirror": False}])
    assert s.decide("GET", "/x?v=2").reason is SkipReason.RULE
    assert s.decide("GET", "/x?v=3").mirror


# --- stickiness -----------------------------------------------------------------------------


# bucket() must never change: a change would reshuffle who is mirrored at every deployment.
KNOWN_BUCKETS = {
    "user-1": 0.6041924073669338,
    "user-2": 0.27380030005580175,
    "alice": 0.3043658763184171,
    "bob": 0.4568354589222517,
    "ünï": 0.345240535617026,
}


def test_bucket_is_a_fixed_function_of_the_value() -> None:
    assert {key: bucket(key) for key in KNOWN_BUCKETS} == KNOWN_BUCKETS


def test_bucket_is_the_same_in_another_process_with_another_hash_seed() -> None:
    code = (
        "from shadowproxy.sampling import bucket;"
        f"print(repr([bucket(k) for k in {list(KNOWN_BUCKETS)!r}]))"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
            cwd=ROOT,
        ).stdout
        assert out.strip() == repr(list(KNOWN_BUCKETS.values()))


def test_sticky_decisions_follow_the_bucket() -> None:
    s = sampler(sample_rate=0.35, sticky_key="header:X-User-Id")
    decided = {
        key: s.decide("GET", "/", headers=headers(X_User_Id=key)).mirror for key in KNOWN_BUCKETS
    }
    assert decided == {"user-1": False, "user-2": True, "alice": True, "bob": False, "ünï": True}


def test_same_key_same_decision_in_separate_samplers() -> None:
    keys = [f"user-{i}" for i in range(500)]
    first = sampler(seed=1, sample_rate=0.3, sticky_key="header:X-User-Id")
    second = sampler(seed=2, sample_rate=0.3, sticky_key="header:X-User-Id")
    for key in keys:
        h = headers(X_User_Id=key)
        verdict = first.decide("GET", "/", headers=h).mirror
        assert all(first.decide("GET", "/", headers=h).mirror == verdict for _ in range(3))
        assert second.decide("GET", "/x", headers=h).mirror == verdict


def test_raising_the_rate_keeps_everyone_already_in() -> None:
    keys = [f"user-{i}" for i in range(5000)]
    rates = (0.01, 0.1, 0.5, 1.0)
    cohorts = []
    for rate in rates:
        s = sampler(sample_rate=rate, sticky_key="cookie:uid")
        cohorts.append(
            {
                k
                for k in keys
                if s.decide("GET", "/", headers=headers(Cookie=f"a=1; uid={k}")).mirror
            }
        )
    for smaller, larger in itertools.pairwise(cohorts):
        assert smaller <= larger
    assert cohorts[-1] == set(keys)


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5, 0.9])
def test_sticky_rate_is_close_to_the_configured_rate(rate: float) -> None:
    generator = random.Random(rate)
    keys = [f"{generator.getrandbits(64):x}" for _ in range(20_000)]
    s = sampler(sample_rate=rate, sticky_key="query:user")
    share = sum(s.decide("GET", f"/p?user={k}").mirror for k in keys) / len(keys)
    # Binomial(20000, rate): five standard deviations either side.
    assert abs(share - rate) <= 5 * (rate * (1 - rate) / len(keys)) ** 0.5


def test_rule_rates_use_the_same_stickiness() -> None:
    s = sampler(
        sample_rate=0.0,
        sticky_key="header:X-User-Id",
        rules=[{"match": "/ten/**", "sample_rate": 0.1}, {"match": "/half/**", "sample_rate": 0.5}],
    )
    keys = [f"u{i}" for i in range(2000)]
    ten = {k for k in keys if s.decide("GET", "/ten/a", headers=headers(X_User_Id=k)).mirror}
    half = {k for k in keys if s.decide("GET", "/half/a", headers=headers(X_User_Id=k)).mirror}
    assert ten <= half
    assert ten == {k for k in keys if bucket(k) < 0.1}


def test_client_ip_key() -> None:
    s = sampler(sample_rate=0.5, sticky_key="client_ip")
    ips = [f"10.0.{i // 256}.{i % 256}" for i in range(400)]
    decisions = {ip: s.decide("GET", "/", client_ip=ip).mirror for ip in ips}
    assert decisions == {ip: bucket(ip) < 0.5 for ip in ips}


def test_requests_without_the_key_are_sampled_at_random() -> None:
    s = sampler(seed=3, sample_rate=0.25, sticky_key="header:X-User-Id")
    share = sum(s.decide("GET", "/").mirror for _ in range(8000)) / 8000
    assert abs(share - 0.25) < 0.03
    empty = sum(s.decide("GET", "/", headers=headers(X_User_Id="")).mirror for _ in range(8000))
    assert abs(empty / 8000 - 0.25) < 0.03


def test_cookie_value_parsing() -> None:
    h = CIMultiDict([("Cookie", 'a=1; uid="q-9" ; b=2'), ("Cookie", "uid=later")])
    assert cookie_value(h, "uid") == "q-9"
    assert cookie_value(h, "b") == "2"
    assert cookie_value(h, "missing") is None
    assert cookie_value(CIMultiDict(), "uid") is None


# --- the candidate's edits ------------------------------------------------------------------


def test_decision_carries_the_rules_edit() -> None:
    s = sampler(
        rules=[
            {
                "match": "/v1/**",
                "rewrite_prefix": {"from": "/v1", "to": "/v2"},
                "headers": {"set": {"X-Tenant": "test"}, "remove": ["Authorization"]},
            },
            {"match": "/plain"},
        ]
    )
    decision = s.decide("GET", "/v1/users?x=1")
    assert decision.edit is not None
    assert decision.edit.path("/v1/users?x=1") == "/v2/users?x=1"
    assert s.decide("GET", "/plain").edit is None


@pytest.mark.parametrize(
    ("source", "target", "path", "expected"),
    [
        ("/v1", "/v2", "/v1/users/7", "/v2/users/7"),
        ("/v1", "/v2", "/v1", "/v2"),
        ("/v1", "/v2", "/v1?a=1", "/v2?a=1"),
        ("/v1/", "/v2/", "/v1/x", "/v2/x"),
        ("/v1", "/v2", "/v10/users", "/v10/users"),
        ("/v1", "/v2", "/other/v1", "/other/v1"),
        ("/v1", "/", "/v1/users", "/users"),
        ("/v1", "/", "/v1", "/"),
        ("/v1", "/", "/v1?q", "/?q"),
        ("/", "/api", "/users", "/api/users"),
        ("/api/v1", "/v1", "/api/v1/a%2Fb", "/v1/a%2Fb"),
    ],
)
def test_prefix_rewrite(source: str, target: str, path: str, expected: str) -> None:
    edit = CandidateEdit(prefix_from=source.rstrip("/"), prefix_to=target.rstrip("/"))
    assert edit.path(path) == expected


def test_header_edits_remove_then_set_then_add() -> None:
    edit = CandidateEdit(
        remove=("authorization", "X-Gone"),
        replace=(("X-Tenant", "test"), ("X-Gone", "back")),
        append=(("X-Tag", "shadow"),),
    )
    h = CIMultiDict(
        [("Authorization", "Bearer s3"), ("X-Tenant", "a"), ("X-Tenant", "b"), ("X-Tag", "c")]
    )
    edit.apply_headers(h)
    assert sorted(h.items()) == [
        ("X-Gone", "back"), ("X-Tag", "c"), ("X-Tag", "shadow"), ("X-Tenant", "test"),
    ]  # fmt: skip
