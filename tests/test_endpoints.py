"""Endpoint folding and endpoint patterns."""

from __future__ import annotations

import pytest

from shadowproxy.endpoints import EndpointPattern, endpoint_of, fold_path, normal_path


@pytest.mark.parametrize(
    ("path", "folded"),
    [
        ("/users/42/orders", "/users/{id}/orders"),
        ("/users/42?verbose=1", "/users/{id}"),
        ("/o/3f2504e0-4f89-11d3-9a0c-0305e82c3301", "/o/{id}"),
        ("/blobs/9f86d081884c7d659a2feaa0c55ad015", "/blobs/{id}"),
        ("/t/01HZX3K9Q2W8E7R6T5Y4U3I2O1", "/t/{id}"),
        ("/v1/users", "/v1/users"),
        ("/api/v2/health-check", "/api/v2/health-check"),
        ("/", "/"),
        ("", "/"),
        ("/magic/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJlX2hlcmU", "/magic/{id}"),
        ("/commits/a3f9c21", "/commits/{id}"),
        ("/users/ada@example.com", "/users/{id}"),
        ("/reports/2024-01-31", "/reports/{id}"),
        ("/api/1.0/users", "/api/1.0/users"),  # a version, not an id
        ("/auth/password-reset-v2", "/auth/password-reset-v2"),
        ("/r/quarterly_report_2024", "/r/quarterly_report_2024"),
        ("/ops/ListOrdersByCustomerV2", "/ops/ListOrdersByCustomerV2"),
        ("/dl/x86_64-unknown-linux-gnu", "/dl/x86_64-unknown-linux-gnu"),
        ("/v1/customers/cus_9s6XKzkNRiz8i3", "/v1/customers/{id}"),
        ("/pods/nginx-deployment-66b6c48dd5-4jw2p", "/pods/{id}"),
        ("/static/swagger-ui.standalone-preset.js", "/static/swagger-ui.standalone-preset.js"),
        ("/k/aGVsbG8gd29ybGQxMjM0NQ==", "/k/{id}"),
        ("/beef/deadbeef", "/beef/deadbeef"),
        ("//users/./42/", "/users/{id}/"),
    ],
)
def test_fold_path(path: str, folded: str) -> None:
    assert fold_path(path) == folded


def test_endpoint_of_uppercases_method() -> None:
    assert endpoint_of("get", "/a/1") == "GET /a/{id}"


@pytest.mark.parametrize(
    ("pattern", "method", "path", "expected"),
    [
        ("GET /users/{id}", "GET", "/users/7", True),
        ("GET /users/{id}", "GET", "/users/{id}", True),
        ("GET /users/{id}", "POST", "/users/7", False),
        ("GET /users/{id}", "GET", "/users/7/orders", False),
        ("/users/{id}", "DELETE", "/users/7?x=1", True),
        ("GET,POST /api/**", "POST", "/api/a/b/c", True),
        ("/api/**", "GET", "/api", True),
        ("/api/*", "GET", "/api/a/b", False),
        ("/static/*.css", "GET", "/static/site.css", True),
        ("* /", "PUT", "/", True),
    ],
)
def test_pattern_matching(pattern: str, method: str, path: str, expected: bool) -> None:
    assert EndpointPattern.parse(pattern).matches(method, path) is expected


def test_pattern_needs_a_path() -> None:
    with pytest.raises(ValueError, match="must start with"):
        EndpointPattern.parse("GET users")


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("/admin/x", "/admin/x"),
        ("/%61dmin/x", "/admin/x"),
        ("//admin//x", "/admin/x"),
        ("/./admin/x", "/admin/x"),
        ("/a/b/../../admin/x", "/admin/x"),
        ("/%2E%2E/admin", "/admin"),
        ("/a/..", "/"),
        ("/a/", "/a/"),
        ("/a%2Fb", "/a%2Fb"),  # a reserved character escaped is data, not a separator
        ("/%7Euser", "/~user"),
        ("/.well-known/x", "/.well-known/x"),
    ],
)
def test_normal_path(raw: str, normal: str) -> None:
    assert normal_path(raw) == normal


def test_patterns_match_every_spelling_of_a_path() -> None:
    pattern = EndpointPattern.parse("GET /admin/**")
    for path in ("/admin/x", "/%61dmin/x", "//admin/x", "/./admin/x", "/x/../admin/y"):
        assert pattern.matches("GET", path)


def test_patterns_are_read_as_paths_are() -> None:
    assert EndpointPattern.parse("/%7Euser/**").matches("GET", "/%7Euser/x")
    assert EndpointPattern.parse("/%7Euser/**").matches("GET", "/~user/x")


def test_literal_ids_in_a_pattern() -> None:
    assert EndpointPattern.parse("GET /items/7/parts/{id}").literal_ids() == ["7"]
    assert EndpointPattern.parse("/reports/**").literal_ids() == []
    assert EndpointPattern.parse("GET /items/%37").literal_ids() == ["7"]  # read as /items/7
