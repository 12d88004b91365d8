"""Redaction: body fields by JSON Pointer patterns, query parameters by name."""

from __future__ import annotations

import pytest

from shadowproxy.record import QueryRedactor
from shadowproxy.redact import Redactor

SECRET = {"user": {"name": "ada", "password": "hunter2"}, "items": [{"token": "t1"}, {"x": 1}]}


def test_patterns_redact_at_and_below_a_difference() -> None:
    redactor = Redactor(["/user/password", "/**/token"])
    assert redactor.value("", SECRET) == {
        "user": {"name": "ada", "password": "[redacted]"},
        "items": [{"token": "[redacted]"}, {"x": 1}],
    }
    assert redactor.value("/user/password", "hunter2") == "[redacted]"
    assert redactor.value("/items/0", {"token": "t1"}) == {"token": "[redacted]"}
    assert redactor.value("/user/name", "ada") == "ada"


def test_differences_only_touch_body_values() -> None:
    redactor = Redactor(["/**/password"])
    items = [
        {"where": "body", "path": "/password", "kind": "changed", "primary": "a", "candidate": "b"},
        {
            "where": "header",
            "path": "password",
            "kind": "changed",
            "primary": "x",
            "candidate": "y",
        },
    ]
    out = redactor.differences(items)
    assert out[0]["primary"] == out[0]["candidate"] == "[redacted]"
    assert out[1] == items[1]


def test_no_patterns_is_a_no_op() -> None:
    redactor = Redactor([])
    assert not redactor
    assert redactor.value("", SECRET) is SECRET


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/p?%74oken=S&api%5Fkey=K&page=2", "/p?%74oken=[redacted]&api%5Fkey=[redacted]&page=2"),
        ("/p?token[]=S&token[a][0]=T&a=1", "/p?token[]=[redacted]&token[a][0]=[redacted]&a=1"),
        ("/p?token%3dS&x=1", "/p?token%3d[redacted]&x=1"),
        ("/p?token=abc)S'\"<>&b=2#frag", "/p?token=[redacted]&b=2#frag"),
        (
            "/p?TOKEN=x;Api_Key=y&keep=%20a+b;k=v",
            "/p?TOKEN=[redacted];Api_Key=[redacted]&keep=%20a+b;k=v",
        ),
        ("/p?user=ada&tokens=1&token", "/p?user=ada&tokens=1&token"),
        ("GET http://h/p?token=S failed", "GET http://h/p?token=[redacted]"),
    ],
)
def test_query_names_are_read_as_a_server_reads_them(text: str, expected: str) -> None:
    assert QueryRedactor(["token", "api_key"])(text) == expected
