"""Secrets sent through every path of the real process never reach the discrepancy log, the
operational log or the admin endpoints: request headers, response headers, body fields named
by log.redact (JSON and forms), query parameters (log.redact_query, in the path and in error
details) and header values that mirror rules set on the candidate's copy."""

from __future__ import annotations

import gzip
import socket
from pathlib import Path

import aiohttp
import orjson
import pytest
import structlog
from aiohttp import web
from yarl import URL

from tests.conftest import Handler, RawResponder
from tests.e2e.conftest import StartProxy
from tests.hardening.support import MakeProxy, Serve, ServeRaw, json_handler

pytestmark = pytest.mark.timeout(60)

# Every secret below contains this, so one search finds any of them.
MARK = "SECRET"


async def primary(request: web.BaseRequest) -> web.StreamResponse:
    if request.path == "/form":
        response = web.Response(
            body=b"user=ada&password=P-FORM-SECRET",
            content_type="application/x-www-form-urlencoded",
        )
    else:
        body = {"user": {"name": "ada", "password": "P-PW-SECRET"}, "token": "P-TOK-SECRET"}
        response = web.json_response(body)
    response.headers.add("Set-Cookie", "session=P-COOKIE-SECRET")
    response.headers["Authorization"] = "Bearer P-AUTH-SECRET"
    return response


def candidate_responder() -> RawResponder:
    async def respond(head: bytes) -> bytes:
        target = head.split(b" ", 2)[1]
        if target.startswith(b"/broken"):
            return b"NOT HTTP AT ALL\r\n\r\n"
        if target.startswith(b"/form"):
            body = b"user=bob&password=C-FORM-SECRET"
            kind = b"application/x-www-form-urlencoded"
        else:
            document = {"user": {"name": "bob", "password": "C-PW-SECRET"}, "token": "C-TOK"}
            body, kind = orjson.dumps(document), b"application/json"
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\n"
            b"Set-Cookie: session=C-COOKIE-SECRET\r\n"
            b"Authorization: Bearer C-AUTH-SECRET\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
        )

    return respond


@pytest.mark.e2e
async def test_secrets_through_every_path_stay_out_of_logs_and_admin_endpoints(
    serve: Serve, serve_raw: ServeRaw, start_proxy: StartProxy
) -> None:
    primary_backend = await serve(primary)
    candidate_backend = await serve_raw(candidate_responder())
    proxy = await start_proxy(
        primary_backend.url,
        candidate_backend.url,
        diff={"ignore_headers": ["date", "content-length", "server", "content-type"]},
        log={"redact": ["/**/password", "/token"]},
        mirror={
            "methods": ["GET", "POST"],
            "rules": [
                {
                    "match": "/**",
                    "headers": {
                        "set": {"Authorization": "Bearer RULE-AUTH-SECRET"},
                        "add": {"X-Api-Key": "RULE-KEY-SECRET", "X-Env": "shadow"},
                    },
                }
            ],
        },
    )
    client_headers = {
        "Authorization": "Bearer CLIENT-AUTH-SECRET",
        "Proxy-Authorization": "Basic CLIENT-PROXY-SECRET",
        "Cookie": "sid=CLIENT-COOKIE-SECRET",
        "X-Api-Key": "CLIENT-KEY-SECRET",
    }
    query = "?token=Q-TOK-SECRET&API_KEY=Q-KEY-SECRET&page=2&access_token=Q-AT-SECRET"
    async with aiohttp.ClientSession(headers=client_headers) as session:
        for target in ("/json" + query, "/form" + query, "/broken" + query):
            async with session.get(proxy.url + target) as response:
                assert response.status == 200
                await response.read()
        async with session.post(proxy.url + "/form" + query, data=b"password=REQ-SECRET"):
            pass
        records = await proxy.wait_records(4)
        admin = {}
        for endpoint in ("/config", "/report", "/report.json", "/metrics"):
            async with session.get(proxy.admin_url + endpoint) as response:
                assert response.status == 200, endpoint
                admin[endpoint] = await response.text()
    assert await proxy.stop() == 0

    log_text = proxy.log_path.read_text()
    assert MARK not in log_text
    for endpoint, text in admin.items():
        assert MARK not in text, endpoint
    assert MARK not in orjson.dumps(proxy.stderr_lines).decode()

    # The redaction did its work where the secrets were, and left the rest readable.
    by_path = {r["path"].split("?")[0] + ":" + r["method"]: r for r in records}
    json_record = by_path["/json:GET"]
    assert json_record["path"] == (
        "/json?token=[redacted]&API_KEY=[redacted]&page=2&access_token=[redacted]"
    )
    places = {(d["where"], d["path"]) for d in json_record["differences"]}
    assert {("body", "/user/password"), ("body", "/user/name")} <= places
    assert ("header", "set-cookie") in places
    form_places = {(d["where"], d["path"]) for d in by_path["/form:GET"]["differences"]}
    assert ("body", "/password") in form_places
    broken = by_path["/broken:GET"]
    assert broken["candidate"]["error"] == "invalid_response"
    assert "not valid HTTP" in broken["candidate"]["detail"]  # and no query in it (MARK)
    config = orjson.loads(admin["/config"])["config"]
    changes = config["mirror"]["rules"][0]["headers"]
    assert changes["set"]["Authorization"] == "[redacted]"
    assert changes["add"] == {"X-Api-Key": "[redacted]", "X-Env": "shadow"}


async def test_operational_log_leaves_query_secrets_out_when_the_primary_fails(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    candidate = await serve(json_handler(b"{}"))
    proxy = await make_proxy(dead, candidate.url)
    with structlog.testing.capture_logs() as events:
        async with client.get(proxy.url + "/x?token=Q-SECRET&page=1") as response:
            assert response.status == 502
    [event] = [e for e in events if e["event"] == "primary_unreachable"]
    assert event["path"] == "/x?token=[redacted]&page=1"
    assert MARK not in repr(events)


def lines_body(password: str, first: str) -> bytes:
    return f'{{\n  "a": {first},\n  "password": "{password}"\n}}\n'.encode()


def body_handler(body: bytes, content_type: str, *, gzipped: bool = False) -> Handler:
    async def handler(_: web.BaseRequest) -> web.StreamResponse:
        headers = {"Content-Encoding": "gzip"} if gzipped else {}
        data = gzip.compress(body) if gzipped else body
        return web.Response(body=data, content_type=content_type, headers=headers)

    return handler


@pytest.mark.parametrize(
    ("content_type", "gzipped"),
    [("application/json", False), ("text/plain", True)],
    ids=["json-declared", "json-looking-gzipped-text"],
)
async def test_redacted_fields_stay_out_of_bodies_compared_as_text(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession, content_type: str,
    gzipped: bool,
) -> None:  # fmt: skip
    """NaN is not JSON: the bodies are compared line by line, where no redaction pattern can
    find the password; its lines are not written, their numbers are."""
    primary = await serve(
        body_handler(lines_body("P-SECRET", "NaN"), content_type, gzipped=gzipped)
    )
    candidate = await serve(
        body_handler(lines_body("C-SECRET", "NaN"), content_type, gzipped=gzipped)
    )
    proxy = await make_proxy(primary.url, candidate.url, log={"redact": ["/password"]})
    async with client.get(proxy.url + "/doc") as response:
        assert response.status == 200
    [record] = await proxy.records()
    assert MARK not in orjson.dumps(record).decode()
    assert record["body_kind"] == "text"
    assert "body_text_withheld" in record["notes"]
    assert "excerpt" not in record
    [body] = [d for d in record["differences"] if d["where"] == "body"]
    assert body["primary"] == {"line": 3, "lines": 4}
    assert body["candidate"] == {"line": 3, "lines": 4}


async def test_text_bodies_without_fields_keep_their_lines_under_redaction(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(body_handler(b"<p>one</p>\n<p>two</p>\n", "text/html", gzipped=True))
    candidate = await serve(body_handler(b"<p>one</p>\n<p>TWO</p>\n", "text/html", gzipped=True))
    proxy = await make_proxy(primary.url, candidate.url, log={"redact": ["/password"]})
    async with client.get(proxy.url + "/page") as response:
        assert response.status == 200
    [record] = await proxy.records()
    assert "body_text_withheld" not in record.get("notes", [])
    assert "+<p>TWO</p>" in record["excerpt"]
    [body] = [d for d in record["differences"] if d["where"] == "body"]
    assert body["candidate"]["text"] == "<p>TWO</p>"


async def test_query_secrets_under_encoded_or_variant_names_stay_out_of_log_and_capture(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    primary = await serve(json_handler(b'{"n": 1}'))
    candidate = await serve(json_handler(b'{"n": 2}'))
    capture = tmp_path / "capture.jsonl"
    proxy = await make_proxy(primary.url, candidate.url, capture={"path": str(capture)})
    query = (
        "?%74oken=Q1-SECRET&api%5Fkey=Q2-SECRET&token[]=Q3-SECRET&page=2"
        "&token%3dQ4-SECRET&sig=abc)Q5-SECRET&keep=%41+b"
    )
    async with client.get(URL(proxy.url + "/x" + query, encoded=True)) as response:
        assert response.status == 200
    [record] = await proxy.records()
    assert proxy.proxy.capture is not None
    await proxy.proxy.capture.close()
    assert MARK not in orjson.dumps(record).decode()
    assert MARK not in capture.read_text()
    redacted = (
        "?%74oken=[redacted]&api%5Fkey=[redacted]&token[]=[redacted]&page=2"
        "&token%3d[redacted]&sig=[redacted]&keep=%41+b"
    )
    assert record["path"] == "/x" + redacted
    [entry] = [orjson.loads(line) for line in capture.read_bytes().splitlines()]
    assert entry["request"]["url"].endswith("/x" + redacted)
    assert {"name": "keep", "value": "A b"} in entry["request"]["queryString"]


def headed(headers: dict[str, str]) -> Handler:
    async def handler(_: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=b"{}", content_type="application/json", headers=headers)

    return handler


async def test_secret_looking_headers_and_url_header_queries_stay_out_of_differences(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    def answer(side: str) -> dict[str, str]:
        return {
            "X-Api-Key": f"{side}-KEY-SECRET",
            "X-Session-Id": f"{side}-SID-SECRET",
            "X-Auth-Token": f"{side}-TOK-SECRET",
            "Location": f"/next?token={side}-LOC-SECRET&page=1",
            "Content-Location": f"/doc?sig={side}-CL-SECRET",
            "X-Plain": side,
        }

    primary = await serve(headed(answer("P")))
    candidate = await serve(headed(answer("C")))
    proxy = await make_proxy(primary.url, candidate.url)
    async with client.get(proxy.url + "/x") as response:
        assert response.status == 200
    [record] = await proxy.records()
    assert MARK not in orjson.dumps(record).decode()
    headers = {d["path"]: d for d in record["differences"] if d["where"] == "header"}
    for name in ("x-api-key", "x-session-id", "x-auth-token"):
        assert headers[name]["primary"] == headers[name]["candidate"] == "[redacted]"
    assert headers["location"]["primary"] == "/next?token=[redacted]&page=1"
    assert headers["content-location"]["candidate"] == "/doc?sig=[redacted]"
    assert (headers["x-plain"]["primary"], headers["x-plain"]["candidate"]) == ("P", "C")
