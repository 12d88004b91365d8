"""Body redaction by JSON Pointer patterns."""

from __future__ import annotations

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
