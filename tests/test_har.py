"""HAR entries: built from captured exchanges, read back for replay, exported as documents."""

from __future__ import annotations

import base64
import gzip
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from shadowproxy.har import (
    Captured,
    CaptureInputError,
    InvalidEntry,
    ReadCounts,
    build_entry,
    count_entries,
    export,
    parse_entry,
    read_entries,
    redact_body,
)
from shadowproxy.record import QueryRedactor
from shadowproxy.redact import Redactor

COMMAND_TIMEOUT = 30


def _name_value() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["name", "value"],
        "properties": {"name": {"type": "string"}, "value": {"type": "string"}},
    }


# The HAR 1.2 structure (http://www.softwareishard.com/blog/har-12-spec/): every required
# field with its type. Custom fields (leading underscore) are allowed by the spec.
HAR_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["log"],
    "properties": {
        "log": {
            "type": "object",
            "required": ["version", "creator", "entries"],
            "properties": {
                "version": {"const": "1.2"},
                "creator": {
                    "type": "object",
                    "required": ["name", "version"],
                    "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
                },
                "entries": {"type": "array", "items": {"$ref": "#/$defs/entry"}},
            },
        }
    },
    "$defs": {
        "entry": {
            "type": "object",
            "required": ["startedDateTime", "time", "request", "response", "cache", "timings"],
            "properties": {
                "startedDateTime": {
                    "type": "string",
                    "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$",
                },
                "time": {"type": "number", "minimum": 0},
                "request": {
                    "type": "object",
                    "required": [
                        "method",
                        "url",
                        "httpVersion",
                        "cookies",
                        "headers",
                        "queryString",
                        "headersSize",
                        "bodySize",
                    ],
                    "properties": {
                        "method": {"type": "string"},
                        "url": {"type": "string", "pattern": "^https?://"},
                        "httpVersion": {"type": "string"},
                        "cookies": {"type": "array"},
                        "headers": {"type": "array", "items": _name_value()},
                        "queryString": {"type": "array", "items": _name_value()},
                        "postData": {
                            "type": "object",
                            "required": ["mimeType"],
                            "properties": {
                                "mimeType": {"type": "string"},
                                "text": {"type": "string"},
                                "params": {"type": "array"},
                                "comment": {"type": "string"},
                            },
                        },
                        "headersSize": {"type": "integer"},
                        "bodySize": {"type": "integer"},
                    },
                },
                "response": {
                    "type": "object",
                    "required": [
                        "status",
                        "statusText",
                        "httpVersion",
                        "cookies",
                        "headers",
                        "content",
                        "redirectURL",
                        "headersSize",
                        "bodySize",
                    ],
                    "properties": {
                        "status": {"type": "integer"},
                        "statusText": {"type": "string"},
                        "httpVersion": {"type": "string"},
                        "cookies": {"type": "array"},
                        "headers": {"type": "array", "items": _name_value()},
                        "content": {
                            "type": "object",
                            "required": ["size", "mimeType"],
                            "properties": {
                                "size": {"type": "integer"},
                                "compression": {"type": "integer"},
                                "mimeType": {"type": "string"},
                                "text": {"type": "string"},
                                "encoding": {"type": "string"},
                                "comment": {"type": "string"},
                            },
                        },
                        "redirectURL": {"type": "string"},
                        "headersSize": {"type": "integer"},
                        "bodySize": {"type": "integer"},
                    },
                },
                "cache": {"type": "object"},
                "timings": {
                    "type": "object",
                    "required": ["send", "wait", "receive"],
                    "properties": {
                        "send": {"type": "number", "minimum": 0},
                        "wait": {"type": "number", "minimum": 0},
                        "receive": {"type": "number", "minimum": 0},
                    },
                },
            },
            "propertyNames": {
                "anyOf": [
                    {"pattern": "^_"},
                    {
                        "enum": [
                            "pageref",
                            "startedDateTime",
                            "time",
                            "request",
                            "response",
                            "cache",
                            "timings",
                            "serverIPAddress",
                            "connection",
                            "comment",
                        ]
                    },
                ]
            },
        }
    },
}


def validate_har(document: Any) -> None:
    jsonschema.validate(document, HAR_SCHEMA)


def captured(**overrides: Any) -> Captured:
    base: dict[str, Any] = {
        "id": "req-1",
        "endpoint": "GET /users/{id}",
        "started_at": 1_700_000_000.25,
        "method": "GET",
        "scheme": "http",
        "raw_path": "/users/42?q=a%20b&flag",
        "http_version": "HTTP/1.1",
        "request_headers": (("Host", "api.test"), ("Authorization", "Bearer s3cret")),
        "request_body": b"",
        "request_size": 0,
        "status": 200,
        "reason": "OK",
        "response_headers": (("Content-Type", "application/json"), ("Set-Cookie", "sid=abc")),
        "response_body": b'{"id": 42, "email": "a@example.com"}',
        "response_size": 36,
        "latency_ms": 12.5,
    }
    base.update(overrides)
    if "response_body" in overrides and "response_size" not in overrides:
        base["response_size"] = len(base["response_body"])
    if "request_body" in overrides and "request_size" not in overrides:
        base["request_size"] = len(base["request_body"])
    return Captured(**base)


def test_an_entry_has_the_har_request_and_response_fields() -> None:
    entry = build_entry(captured(), Redactor([]), 1 << 20)
    validate_har(
        {"log": {"version": "1.2", "creator": {"name": "t", "version": "1"}, "entries": [entry]}}
    )
    request, response = entry["request"], entry["response"]
    assert request["url"] == "http://api.test/users/42?q=a%20b&flag"
    assert request["queryString"] == [{"name": "q", "value": "a b"}, {"name": "flag", "value": ""}]
    assert entry["startedDateTime"] == "2023-11-14T22:13:20.250Z"
    assert response["content"]["text"] == '{"id": 42, "email": "a@example.com"}'
    assert response["content"]["size"] == 36
    assert entry["_id"] == "req-1"
    assert "postData" not in request


def test_secret_headers_and_configured_fields_are_redacted() -> None:
    body = b'{"user": "u", "password": "hunter2", "nested": {"password": "x"}}'
    entry = build_entry(
        captured(
            method="POST",
            request_headers=(
                ("Host", "h"),
                ("Cookie", "sid=1"),
                ("Content-Type", "application/json"),
            ),
            request_body=body,
        ),
        Redactor(["/**/password", "/email"]),
        1 << 20,
    )
    text = orjson.dumps(entry)
    for secret in (b"hunter2", b"sid=1", b"sid=abc", b"a@example.com", b"s3cret"):
        assert secret not in text
    post = entry["request"]["postData"]
    assert orjson.loads(post["text"]) == {
        "user": "u",
        "password": "[redacted]",
        "nested": {"password": "[redacted]"},
    }
    assert post["_redacted"] == ["/password", "/nested/password"]
    assert entry["response"]["content"]["_redacted"] == ["/email"]
    assert entry["request"]["cookies"] == []
    assert entry["response"]["cookies"] == []


def test_form_fields_are_redacted_too() -> None:
    entry = build_entry(
        captured(
            method="POST",
            request_headers=(("Content-Type", "application/x-www-form-urlencoded"),),
            request_body=b"user=u&password=hunter2",
        ),
        Redactor(["/password"]),
        1 << 20,
    )
    assert entry["request"]["postData"]["text"] == "user=u&password=%5Bredacted%5D"


def test_a_body_that_cannot_be_redacted_is_not_written() -> None:
    entry = build_entry(
        captured(response_body=b'{"email": "a@example.com", "cut'), Redactor(["/email"]), 1 << 20
    )
    content = entry["response"]["content"]
    assert "text" not in content
    assert "cannot be redacted" in content["_omitted"]
    assert parse_entry(entry).response is None


def test_binary_bodies_are_base64() -> None:
    blob = bytes(range(256))
    entry = build_entry(
        captured(
            method="PUT",
            request_headers=(("Content-Type", "application/octet-stream"),),
            request_body=blob,
            response_headers=(("Content-Type", "image/png"),),
            response_body=blob[::-1],
        ),
        Redactor([]),
        1 << 20,
    )
    post, content = entry["request"]["postData"], entry["response"]["content"]
    assert post["_encoding"] == "base64"
    assert base64.b64decode(post["text"]) == blob
    assert content["encoding"] == "base64"
    assert base64.b64decode(content["text"]) == blob[::-1]
    recorded = parse_entry(entry)
    assert recorded.body == blob
    assert recorded.response is not None
    assert recorded.response.body == blob[::-1]


def test_compressed_responses_are_written_decoded_as_har_prescribes() -> None:
    plain = b'{"items": [1, 2, 3]}' * 50
    packed = gzip.compress(plain)
    entry = build_entry(
        captured(
            response_headers=(("Content-Type", "application/json"), ("Content-Encoding", "gzip")),
            response_body=packed,
        ),
        Redactor([]),
        1 << 20,
    )
    content = entry["response"]["content"]
    assert content["text"] == plain.decode()
    assert content["size"] == len(plain)
    assert content["compression"] == len(plain) - len(packed)
    assert entry["response"]["bodySize"] == len(packed)
    response = parse_entry(entry).response
    assert response is not None
    assert response.body == plain
    assert response.header("content-encoding") is None  # the body is no longer encoded


def test_a_cut_response_keeps_its_prefix_and_size() -> None:
    entry = build_entry(
        captured(
            response_headers=(("Content-Type", "text/plain"),),
            response_body=b"abcdef",
            response_size=1000,
        ),
        Redactor([]),
        6,
    )
    content = entry["response"]["content"]
    assert content["_truncated"] is True
    assert content["_raw"] is True
    response = parse_entry(entry).response
    assert response is not None
    assert (response.body, response.size, response.truncated) == (b"abcdef", 1000, True)


def test_a_cut_request_body_is_marked_and_not_replayable() -> None:
    entry = build_entry(
        captured(method="POST", request_body=b"abc", request_size=10_000), Redactor([]), 3
    )
    assert entry["request"]["postData"]["_truncated"] is True
    recorded = parse_entry(entry)
    assert recorded.body is None
    assert recorded.request_problem == "request body not captured in full"


def test_export_writes_a_valid_har_document(tmp_path: Path) -> None:
    entries = [
        build_entry(captured(id=f"r{i}", raw_path=f"/users/{i}"), Redactor([]), 1 << 20)
        for i in range(3)
    ]
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in entries))
    out = io.BytesIO()
    assert export([str(capture)], out) == 3
    document = orjson.loads(out.getvalue())
    validate_har(document)
    assert document["log"]["creator"]["name"] == "shadowproxy"
    assert [e["_id"] for e in document["log"]["entries"]] == ["r0", "r1", "r2"]


def test_export_command_streams_gzip_captures_and_skips_corrupt_lines(tmp_path: Path) -> None:
    entry = orjson.dumps(build_entry(captured(), Redactor([]), 1 << 20))
    capture = tmp_path / "capture.jsonl.gz"
    capture.write_bytes(gzip.compress(entry + b"\n{not json\n" + entry + b"\n"))
    out = tmp_path / "out.har"
    result = subprocess.run(
        [sys.executable, "-m", "shadowproxy", "capture", "export", str(capture), "--har", str(out)],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"{capture}, line 2" in result.stderr
    document = orjson.loads(out.read_bytes())
    validate_har(document)
    assert len(document["log"]["entries"]) == 2


def test_export_of_a_missing_file_fails_cleanly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shadowproxy", "capture", "export", str(tmp_path / "nope"),
         "--har", str(tmp_path / "out.har")],
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "no such file" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.har").exists()


BROWSER_HAR = """{
  "log": {
    "version": "1.2",
    "creator": {"name": "WebInspector", "version": "537.36"},
    "pages": [],
    "entries": [
      {
        "startedDateTime": "2024-05-01T10:00:00.000+02:00",
        "time": 35.2,
        "request": {
          "method": "GET",
          "url": "https://shop.example/api/items?page=2",
          "httpVersion": "http/2.0",
          "headers": [
            {"name": ":authority", "value": "shop.example"},
            {"name": ":path", "value": "/api/items?page=2"},
            {"name": "accept", "value": "application/json"}
          ],
          "queryString": [{"name": "page", "value": "2"}],
          "cookies": [],
          "headersSize": -1,
          "bodySize": 0
        },
        "response": {
          "status": 200,
          "statusText": "",
          "httpVersion": "http/2.0",
          "headers": [
            {"name": "content-type", "value": "application/json"},
            {"name": "content-encoding", "value": "br"}
          ],
          "cookies": [],
          "content": {"size": 13, "mimeType": "application/json", "text": "{\\"items\\":[]}"},
          "redirectURL": "",
          "headersSize": -1,
          "bodySize": 9
        },
        "cache": {},
        "timings": {"blocked": -1, "dns": -1, "connect": -1, "send": 0, "wait": 35, "receive": 0}
      },
      {
        "startedDateTime": "2024-05-01T10:00:01.000+02:00",
        "time": 0,
        "request": {"method": "GET", "url": "https://ads.example/x.js", "httpVersion": "",
                    "headers": [], "queryString": [], "cookies": [], "headersSize": -1,
                    "bodySize": 0},
        "response": {"status": 0, "statusText": "", "httpVersion": "", "headers": [],
                     "cookies": [], "content": {"size": 0, "mimeType": "x-unknown"},
                     "redirectURL": "", "headersSize": -1, "bodySize": -1,
                     "_error": "net::ERR_BLOCKED_BY_CLIENT"},
        "cache": {},
        "timings": {"send": 0, "wait": 0, "receive": 0}
      }
    ]
  }
}
"""


def test_a_browser_har_document_is_read(tmp_path: Path) -> None:
    path = tmp_path / "browser.har"
    path.write_text(BROWSER_HAR)
    counts = ReadCounts()
    items = list(read_entries([str(path)], counts))
    assert len(items) == 2
    assert count_entries([str(path)]) == 2
    first = parse_entry(items[0].entry)
    assert first.method == "GET"
    assert first.path == "/api/items?page=2"
    assert first.headers == (("accept", "application/json"),)  # pseudo-headers left out
    assert first.started_at == pytest.approx(1_714_550_400.0)
    assert first.response is not None
    assert first.response.body == b'{"items":[]}'
    assert first.response.header("content-encoding") is None
    blocked = parse_entry(items[1].entry)
    assert blocked.response is None
    assert blocked.response_problem == "no response recorded (status 0)"


def test_a_har_document_with_a_byte_order_mark_and_wrapped_base64_is_read(
    tmp_path: Path,
) -> None:
    document = orjson.loads(BROWSER_HAR)
    content = document["log"]["entries"][0]["response"]["content"]
    encoded = base64.b64encode(b'{"items":[]}' * 10).decode()
    content.update(text="\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76)))
    content["encoding"] = "base64"
    path = tmp_path / "bom.har"
    path.write_bytes(b"\xef\xbb\xbf" + orjson.dumps(document, option=orjson.OPT_INDENT_2))
    counts = ReadCounts()
    items = list(read_entries([str(path)], counts))
    assert (len(items), counts.corrupt) == (2, 0)
    assert count_entries([str(path)]) == 2
    response = parse_entry(items[0].entry).response
    assert response is not None
    assert response.body == b'{"items":[]}' * 10


def test_a_one_line_har_document_is_a_document(tmp_path: Path) -> None:
    path = tmp_path / "one.har"
    path.write_bytes(orjson.dumps(orjson.loads(BROWSER_HAR)))
    assert len(list(read_entries([str(path)]))) == 2


def test_corrupt_lines_are_counted_with_their_place(tmp_path: Path) -> None:
    entry = orjson.dumps(build_entry(captured(), Redactor([]), 1 << 20))
    path = tmp_path / "capture.jsonl"
    path.write_bytes(entry + b"\n\n[1, 2]\n" + entry[:40] + b"\n" + entry + b"\n")
    counts = ReadCounts()
    items = list(read_entries([str(path)], counts))
    assert [item.line for item in items] == [1, 5]
    assert counts.corrupt == 2
    assert counts.first_corrupt == f"{path}, line 3"
    assert count_entries([str(path)]) == 4  # non-blank lines: a fast count, for the ETA


def test_a_broken_har_document_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.har"
    path.write_text('{\n  "log": {"entries": [\n')
    with pytest.raises(CaptureInputError, match="not a HAR document"):
        list(read_entries([str(path)]))


def test_invalid_entries_raise_with_the_field_named() -> None:
    entry = build_entry(captured(), Redactor([]), 1 << 20)
    entry["request"]["headers"] = [{"name": "x"}]
    with pytest.raises(ValueError, match=r"request\.headers"):
        parse_entry(entry)


def test_a_redacted_body_keeps_escapes_that_are_not_text_exactly() -> None:
    """``\\ud800`` is valid JSON that no UTF-8 text can hold as a character: it stays escaped."""
    body = b'{"password": "hunter2", "note": "\\ud800", "n": 123456789012345678901234567890}'
    redacted = redact_body(body, "application/json", Redactor(["/password"]))
    assert redacted.redacted == ["/password"]
    assert redacted.data is not None
    assert b"hunter2" not in redacted.data
    assert json.loads(redacted.data) == {
        "password": "[redacted]",
        "note": "\ud800",
        "n": 123456789012345678901234567890,
    }


MULTIPART = (
    b'--b0\r\nContent-Disposition: form-data; name="user"\r\n\r\nu\r\n'
    b'--b0\r\nContent-Disposition: form-data; name="password"\r\n\r\nhunter2\r\n--b0--\r\n'
)


@pytest.mark.parametrize(
    ("content_type", "body", "omitted"),
    [
        ("multipart/form-data; boundary=b0", MULTIPART, "multipart bodies are not redacted"),
        ("text/plain", b'{"password": "hunter2", "a": NaN}', "looks like JSON but is not valid"),
        (None, b'{"password": "hunter2", "a": NaN}', "looks like JSON but is not valid"),
    ],
)
def test_a_body_redaction_cannot_reach_is_left_out(
    content_type: str | None, body: bytes, omitted: str
) -> None:
    headers = (("Content-Type", content_type),) if content_type else ()
    entry = build_entry(
        captured(method="POST", request_headers=headers, request_body=body),
        Redactor(["/password"]),
        1 << 20,
    )
    assert b"hunter2" not in orjson.dumps(entry)
    post = entry["request"]["postData"]
    assert omitted in post["_omitted"]
    assert "text" not in post
    recorded = parse_entry(entry)
    assert recorded.body is None
    assert recorded.request_problem is not None
    assert omitted in recorded.request_problem
    # Without redaction patterns the body is kept as it was.
    kept = build_entry(
        captured(method="POST", request_headers=headers, request_body=body), Redactor([]), 1 << 20
    )
    assert parse_entry(kept).body == body


def test_a_form_without_a_content_type_is_redacted_as_a_form() -> None:
    entry = build_entry(
        captured(method="POST", request_headers=(), request_body=b"user=u&password=hunter2"),
        Redactor(["/password"]),
        1 << 20,
    )
    post = entry["request"]["postData"]
    assert post["text"] == "user=u&password=%5Bredacted%5D"
    assert post["_redacted"] == ["/password"]
    plain = build_entry(
        captured(method="POST", request_headers=(), request_body=b"just text, no fields"),
        Redactor(["/password"]),
        1 << 20,
    )
    assert plain["request"]["postData"]["text"] == "just text, no fields"


def test_secret_looking_headers_and_queries_in_url_headers_are_redacted() -> None:
    entry = build_entry(
        captured(
            request_headers=(
                ("Host", "h"),
                ("X-Api-Key", "k-secret"),
                ("X-Session-Id", "s-secret"),
                ("X-Auth-Token", "t-secret"),
                ("Referer", "https://app.test/from?token=r-secret&tab=2"),
                ("Accept", "application/json"),
            ),
            status=302,
            response_headers=(
                ("Location", "/next?token=l-secret&page=1"),
                ("Content-Location", "/doc?TOKEN=c-secret"),
                ("X-Upstream-Signature", "u-secret"),
            ),
        ),
        Redactor([]),
        1 << 20,
        QueryRedactor(["token"]),
    )
    assert b"secret" not in orjson.dumps(entry)
    request = {h["name"]: h["value"] for h in entry["request"]["headers"]}
    assert (
        request["X-Api-Key"] == request["X-Session-Id"] == request["X-Auth-Token"] == "[redacted]"
    )
    assert request["Referer"] == "https://app.test/from?token=[redacted]&tab=2"
    assert request["Accept"] == "application/json"
    response = {h["name"]: h["value"] for h in entry["response"]["headers"]}
    assert response["Location"] == "/next?token=[redacted]&page=1"
    assert response["Content-Location"] == "/doc?TOKEN=[redacted]"
    assert response["X-Upstream-Signature"] == "[redacted]"
    assert entry["response"]["redirectURL"] == "/next?token=[redacted]&page=1"


@pytest.mark.parametrize(
    "host", ["svc.example#frag", "svc.example/admin/delete?", "user@svc.example", "svc example"]
)
def test_a_malformed_host_cannot_change_the_replayed_target(host: str) -> None:
    entry = build_entry(
        captured(raw_path="/trail?", request_headers=(("Host", host),)), Redactor([]), 1 << 20
    )
    assert entry["request"]["_target"] == "/trail?"
    assert parse_entry(entry).path == "/trail?"
    del entry["request"]["_target"]  # as an entry without it: the url alone
    assert parse_entry(entry).path == "/trail?"


def test_a_url_keeps_its_path_as_written() -> None:
    def path(url: str) -> str:
        entry = build_entry(captured(), Redactor([]), 1 << 20)
        del entry["request"]["_target"]
        entry["request"]["url"] = url
        return parse_entry(entry).path

    assert path("https://h.test/trail?") == "/trail?"
    assert path("https://h.test?x=1") == "/?x=1"
    assert path("https://h.test") == "/"
    assert path("https://h.test:8443/a%2Fb?q=1#top") == "/a%2Fb?q=1"


def test_options_asterisk_is_captured_and_replayed_as_such() -> None:
    entry = build_entry(
        captured(method="OPTIONS", raw_path="*", request_headers=(("Host", "svc.example"),)),
        Redactor([]),
        1 << 20,
    )
    assert entry["request"]["url"] == "http://svc.example/"
    assert entry["request"]["_target"] == "*"
    assert parse_entry(entry).path == "*"
    entry["request"]["method"] = "GET"  # only OPTIONS has an asterisk target
    with pytest.raises(InvalidEntry, match=r"request\._target"):
        parse_entry(entry)
