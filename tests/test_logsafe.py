"""Log lines are written whatever they hold: text that is not UTF-8, integers beyond 64 bits."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shadowproxy.logsafe import dumps, loggable, scrubbed

SURROGATE = "caf\udce9"  # a byte that was not UTF-8, decoded with surrogateescape


def test_what_orjson_writes_is_written_by_orjson_unchanged() -> None:
    line = {"ts": "t", "event": "exchange", "n": 2**63 - 1, "text": "café", "list": [1, None]}
    assert dumps(line) == orjson.dumps(line)


def test_text_that_is_not_utf8_is_replaced_at_any_depth() -> None:
    line = {"id": SURROGATE, "nested": {SURROGATE: [SURROGATE, ("x", SURROGATE)]}}
    with pytest.raises(TypeError):
        orjson.dumps(line)
    assert orjson.loads(dumps(line)) == {"id": "caf?", "nested": {"caf?": ["caf?", ["x", "caf?"]]}}


def test_integers_beyond_64_bits_are_written_as_their_digits() -> None:
    assert orjson.loads(dumps({"big": 2**64, "small": -(2**63) - 1, "ok": 2**64 - 1})) == {
        "big": str(2**64),
        "small": str(-(2**63) - 1),
        "ok": 2**64 - 1,
    }


def test_options_apply_to_the_scrubbed_line_too() -> None:
    assert dumps({"id": SURROGATE}, option=orjson.OPT_APPEND_NEWLINE).endswith(b"\n")


@given(st.recursive(st.none() | st.integers() | st.text(), lambda c: st.lists(c, max_size=3)))
def test_every_value_can_be_written(value: object) -> None:
    assert orjson.loads(dumps({"value": value}))["value"] == orjson.loads(
        orjson.dumps(scrubbed(value))
    )


def test_valid_text_is_kept() -> None:
    assert loggable("plain") == "plain"
    assert loggable("café ☕") == "café ☕"
