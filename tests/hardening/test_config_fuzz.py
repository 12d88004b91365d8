"""The config loader under arbitrary input: any text, any YAML, any nested data gives a valid
config or a `ConfigError` with a message, never another exception.

(The diff engine's own property tests, including arbitrary backend responses, live in
``tests/compare/test_properties.py``.)
"""

from __future__ import annotations

import math
import string
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowproxy.config import Config, ConfigError, load_config, parse_config
from tests.test_config_examples import model_keys

pytestmark = pytest.mark.timeout(120)

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

VALID = {"primary": {"url": "http://127.0.0.1:8000"}, "candidate": {"url": "http://127.0.0.1:9"}}

# The keys the model knows, at any level, so generated mappings hit real validators often.
KNOWN_KEYS = sorted(
    {
        "listen", "admin", "admin_token", "primary", "candidate", "secondary", "url", "timeout",
        "connect_timeout", "host", "max_connections", "keepalive_timeout", "tls", "mirror",
        "sample_rate", "methods", "max_in_flight", "max_body_bytes", "shutdown_grace", "rules",
        "sticky_key", "max_rps", "breaker", "failures", "pause", "match", "when", "header",
        "query", "allow_unsafe", "rewrite_prefix", "from", "to", "headers", "set",
        "add", "remove", "diff", "ignore", "unordered", "path", "key", "tolerance", "absolute",
        "relative", "ignore_headers", "null_equals_missing", "endpoints", "max_differences",
        "workers", "max_queue", "log", "redact", "redact_query", "flush_interval", "max_bytes",
        "backups", "limits", "header_timeout", "idle_timeout", "max_header_size", "max_headers",
        "max_request_body_bytes", "shutdown_timeout", "reload", "watch", "poll_interval",
        "compare_headers", "capture", "noise",
    }
)  # fmt: skip

AWKWARD: list[Any] = [
    None, True, 0, -1, 2**63, -(2**70), 10**400, 0.5, -0.0, 1e308, float("nan"), float("inf"),
    "1MiB", "9" * 400 + "GiB", "1e400", "-1", "0.5%", "nan%", "1e999%", "inf", "GET /x/{id}",
    "/**/a", "header:X", "query:", "cookie:a b", "unix:///s", "http://a:1", "::", "1.5.5KiB",
    "", " ", "\x00", "a\nb", "%", "/", "ftp://x", "http://", "999999:1", [], {}, [None],
    {"": None}, ["GET"], {"a": "b"},
]  # fmt: skip
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(AWKWARD)
)
keys = st.sampled_from(KNOWN_KEYS) | st.text(max_size=6)
documents = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=40,
)


def numbers(data: Any) -> list[float]:
    if isinstance(data, dict):
        return [n for value in data.values() for n in numbers(value)]
    if isinstance(data, list | tuple):
        return [n for value in data for n in numbers(value)]
    return [data] if isinstance(data, float) else []


def check(load: Any) -> None:
    message = None
    try:
        config = load()
    except ConfigError as error:
        message = str(error)
    if message is None:
        assert isinstance(config, Config)
        # What the proxy does with a config it accepted: log its digest, serve it on /config.
        config.digest()
        orjson.dumps(config.redacted())
        assert all(math.isfinite(v) for v in numbers(config.model_dump())), "NaN or infinity"
    else:
        assert message.strip(), "a ConfigError must say what is wrong"


@SETTINGS
@given(documents)
def test_any_data_gives_a_config_or_a_config_error(data: Any) -> None:
    check(lambda: parse_config(data))


@SETTINGS
@given(st.dictionaries(keys, documents, max_size=6))
def test_any_data_beside_valid_backends_gives_a_config_or_a_config_error(
    extra: dict[str, Any],
) -> None:
    check(lambda: parse_config({**VALID, **extra}))


def nested(dotted: str, value: Any) -> dict[str, Any]:
    head, _, rest = dotted.partition(".")
    return {head: nested(rest, value) if rest else value}


DOTTED_KEYS = sorted(model_keys(Config))


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(DOTTED_KEYS), documents), min_size=1, max_size=3))
def test_any_value_for_any_known_key_gives_a_config_or_a_config_error(
    settings_: list[tuple[str, Any]],
) -> None:
    data: dict[str, Any] = {**VALID}
    for dotted, value in settings_:
        section = nested(dotted, value)
        for key, inner in section.items():
            existing = data.get(key)
            data[key] = (
                {**existing, **inner}
                if isinstance(existing, dict) and isinstance(inner, dict)
                else inner
            )
    check(lambda: parse_config(data))


def test_every_awkward_value_at_every_known_key() -> None:
    for dotted in DOTTED_KEYS:
        for value in AWKWARD:
            check(lambda: parse_config({**VALID, **nested(dotted, value)}))  # noqa: B023


yaml_text = st.text(
    alphabet=st.sampled_from(
        [
            *(string.ascii_letters + string.digits + " \t\n:-[]{},#&*!|>'\"%@`?.=/\\"),
            *("\x00", "\ufeff", "\u2028", "\x85", "é", "☃"),
        ]
    ),
    max_size=200,
)


@SETTINGS
@given(yaml_text)
def test_any_text_gives_a_config_or_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    check(lambda: load_config(path))


@SETTINGS
@given(documents)
def test_any_yaml_document_gives_a_config_or_a_config_error(tmp_path: Path, data: Any) -> None:
    path = tmp_path / "config.yaml"
    try:
        text = yaml.safe_dump({**VALID, "x": data} if isinstance(data, dict) else data)
    except yaml.YAMLError:
        return
    path.write_text(text, encoding="utf-8")
    check(lambda: load_config(path))


@pytest.mark.parametrize(
    "text",
    [
        "listen: 2020-02-30",  # looks like a date to YAML, is not one
        "a: !!python/object:os.system {}",
        "a: &x [*x]",
        "a: " + "[" * 2000 + "]" * 2000,
        "? [a, b]\n: c",
        "\ufeffprimary: {url: http://a}",
        "primary: {url: http://a}\ncandidate: {url: http://b}\nlog: {max_bytes: " + "9" * 400 + "}",
        "primary: {url: http://a}\ncandidate: {url: http://b}\nlimits: {max_header_size: 1e400}",
        "primary: {url: http://a}\ncandidate: {url: http://b}\ndiff: {tolerance: '1e999%'}",
        "primary: {url: http://a}\ncandidate: {url: http://b}\nmirror: {max_body_bytes: "
        + "9" * 400
        + "GiB}",
        "primary: {url: http://a}\ncandidate: {url: http://b}\nlimits: {header_timeout: .nan}",
        "primary: {url: http://a}\ncandidate: {url: http://b}\nmirror: {max_in_flight: "
        + "9" * 30
        + "}",
        'primary: {url: http://a}\ncandidate: {url: http://b}\nlog: {path: "a\\0b"}',
        "\x00",
        "- - - -",
    ],
)
def test_awkward_files(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    check(lambda: load_config(path))
