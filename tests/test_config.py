"""The config model: defaults, bounds, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from shadowproxy.config import (
    DEFAULT_IGNORE_HEADERS,
    ConfigError,
    load_config,
    parse_config,
    without_credentials,
)
from tests.conftest import run_cli

MINIMAL = {"primary": {"url": "http://127.0.0.1:1"}, "candidate": {"url": "http://127.0.0.1:2"}}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def error_of(data: object) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return str(caught.value)


def test_defaults_are_safe() -> None:
    config = parse_config(MINIMAL)
    assert config.admin.host == "127.0.0.1"
    assert config.mirror.methods == ["GET", "HEAD", "OPTIONS"]
    assert config.mirror.sample_rate == 1.0
    assert tuple(config.diff.ignore_headers) == DEFAULT_IGNORE_HEADERS
    assert config.log.path == "-"


def test_sample_rate_out_of_range_names_the_key() -> None:
    message = error_of({**MINIMAL, "mirror": {"sample_rate": 1.5}})
    assert message == "mirror.sample_rate: must be between 0 and 1"


def test_unknown_keys_are_named() -> None:
    message = error_of({**MINIMAL, "mirror": {"sample_rat": 0.5}, "extra": 1})
    assert "mirror.sample_rat: unknown key" in message
    assert "extra: unknown key" in message


def test_missing_required_key() -> None:
    assert error_of({"primary": {"url": "http://a"}}) == "candidate: required key is missing"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"listen": "nowhere"}, "listen: must be"),
        ({"primary": {"url": "ftp://x"}}, "primary.url: must be an http://, https:// or unix://"),
        ({"candidate": {"url": "http://b", "timeout": 0}}, "candidate.timeout: must be greater"),
        ({"mirror": {"methods": ["GET", "FETCH"]}}, "mirror.methods: unknown HTTP method"),
        ({"mirror": {"max_in_flight": 0}}, "mirror.max_in_flight:"),
        ({"mirror": {"max_body_bytes": "lots"}}, "mirror.max_body_bytes: must be a number"),
        ({"candidate": {"url": "http://127.0.0.1:1"}}, "candidate.url: must differ"),
        (
            {"diff": {"endpoints": [{"match": "GET /users/{id}", "unordered": ["roles"]}]}},
            'diff.endpoints[0].unordered[0].path: JSON Pointer pattern "roles" must start',
        ),
        ({"diff": {"ignore": ["/a~2b"]}}, 'diff.ignore[0]: JSON Pointer pattern "/a~2b": "~"'),
        ({"primary": {"url": "http://a:notaport"}}, "primary.url: not a valid URL: port can"),
        ({"primary": {"url": "http://127.0.0.1:99999"}}, "primary.url: not a valid URL: Port"),
        ({"primary": {"url": "http://[::1"}}, "primary.url: not a valid URL"),
        ({"primary": {"url": "http://h:0"}}, "primary.url: port must be between 1 and 65535"),
        ({"candidate": {"url": "http://b?x=1"}}, "candidate.url: must not hold spaces, a query"),
        ({"candidate": {"url": "http://b c"}}, "candidate.url: must not hold spaces"),
        ({"admin": ":9901"}, 'admin: must name the host: "0.0.0.0:PORT"'),
        ({"listen": 8080}, 'listen: must be "host:port", such as'),
        ({"log": {"path": ""}}, "log.path: string should have at least 1 character"),
        ({"mirror": {"list": 1}}, "mirror.list: unknown key"),
        ({"mirror": {None: 1}}, "mirror: the key null must be a string (quote it)"),
    ],
)
def test_bad_values_name_their_key(data: dict[str, object], expected: str) -> None:
    merged = {**MINIMAL, **data}
    assert expected in error_of(merged)


def test_tolerance_written_as_yaml_reads_it(tmp_path: Path) -> None:
    """YAML 1.1 reads ``1e-9`` (no dot) as a string; it is still an absolute tolerance."""
    base = "primary: {url: http://a}\ncandidate: {url: http://b}\n"
    for text, absolute, relative in (("1e-9", 1e-9, 0.0), ("0.5", 0.5, 0.0), ('"2%"', 0.0, 0.02)):
        config = load_config(write(tmp_path, f"{base}diff: {{tolerance: {text}}}\n"))
        assert config.diff.tolerance is not None
        assert (config.diff.tolerance.absolute, config.diff.tolerance.relative) == (
            absolute,
            relative,
        )


def test_sizes_accept_units() -> None:
    config = parse_config({**MINIMAL, "mirror": {"max_body_bytes": "2MiB"}})
    assert config.mirror.max_body_bytes == 2 * 1024 * 1024


def test_yaml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "primary:\n  url: http://a\n candidate: [\n")
    with pytest.raises(ConfigError, match=r"line \d+"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_run_with_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "primary: {url: 'http://127.0.0.1:1'}\n"
        "candidate: {url: 'http://127.0.0.1:2'}\n"
        "mirror: {sample_rate: 7}\n",
    )
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 2
    assert "mirror.sample_rate: must be between 0 and 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_names_the_key_of_a_missing_certificate(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "primary: {url: 'http://127.0.0.1:1'}\n"
        "candidate: {url: 'http://127.0.0.1:2'}\n"
        "listen_tls: {address: '127.0.0.1:0', cert_file: /no/cert.pem, key_file: /no/key.pem}\n",
    )
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 1
    assert "listen_tls.cert_file: /no/cert.pem: No such file or directory" in result.stderr
    assert "listen_tls.key_file: /no/key.pem" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_refuses_no_workers(tmp_path: Path) -> None:
    path = write(tmp_path, "primary: {url: 'http://a:1'}\ncandidate: {url: 'http://b:2'}\n")
    result = run_cli("run", "--config", str(path), "--workers", "0")
    assert result.returncode == 2
    assert "--workers/-w: 0: must be at least 1" in result.stderr


def test_check_config_reports_ok_and_missing_file(tmp_path: Path) -> None:
    good = write(tmp_path, "primary: {url: 'http://a:1'}\ncandidate: {url: 'http://b:2'}\n")
    ok = run_cli("check-config", str(good))
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    missing = run_cli("check-config", str(tmp_path / "absent.yaml"))
    assert missing.returncode == 2
    assert "not found" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_reload_keeps_what_only_a_restart_changes() -> None:
    running = parse_config({**MINIMAL, "admin": "127.0.0.1:9901", "mirror": {"sample_rate": 1}})
    new = parse_config(
        {
            "primary": {"url": "http://127.0.0.1:7"},
            "candidate": {"url": "http://127.0.0.1:8"},
            "admin": "0.0.0.0:9901",
            "mirror": {"sample_rate": 0.5},
            "log": {"path": "/elsewhere.jsonl", "flush_interval": 2},
        }
    )
    assert running.restart_only_changes(new) == ["admin", "primary", "candidate", "log.path"]
    applied = running.reloaded(new)
    assert (applied.admin, applied.primary, applied.candidate) == (
        running.admin,
        running.primary,
        running.candidate,
    )
    assert applied.log.path == running.log.path
    assert applied.log.flush_interval == 2
    assert applied.mirror.sample_rate == 0.5
    assert running.restart_only_changes(applied) == []


def test_credentials_are_taken_out_of_urls() -> None:
    assert without_credentials("http://u:p@h:1/x") == "http://[redacted]@h:1/x"
    assert without_credentials("http://h:1/a@b") == "http://h:1/a@b"
    assert without_credentials("http://u:p@ss@h:1/x") == "http://[redacted]@h:1/x"
    assert without_credentials("http://h:1?next=a@b.c") == "http://h:1?next=a@b.c"


def test_yaml_aliases_cannot_expand_without_bound(tmp_path: Path) -> None:
    """Nine levels of nine aliases would be 387 million values for the validators."""
    lines = [
        "primary: {url: http://127.0.0.1:1}",
        "candidate: {url: http://127.0.0.1:2}",
        'a0: &a0 ["/x", "/x", "/x", "/x", "/x", "/x", "/x", "/x", "/x"]',
        *(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)),
        "diff: {ignore: *a8}",
    ]
    with pytest.raises(ConfigError, match=r"more than 100,000 values \(YAML aliases"):
        load_config(write(tmp_path, "\n".join(lines)))


def test_unreadable_certificate_files_are_named_by_key(tmp_path: Path) -> None:
    config = parse_config(
        {
            "primary": {"url": "https://127.0.0.1:1", "tls": {"ca_file": str(tmp_path / "ca")}},
            "candidate": {"url": "http://127.0.0.1:2"},
        }
    )
    assert config.unreadable_files() == [
        f"primary.tls.ca_file: {tmp_path / 'ca'}: No such file or directory"
    ]
    (tmp_path / "ca").write_text("")
    assert config.unreadable_files() == []


def test_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    text = "primary: {url: 'http://a:1'}\ncandidate: {url: 'http://b:2'}\n"
    with pytest.raises(ConfigError, match="line 4, column 1: the key 'mirror' is given twice"):
        load_config(write(tmp_path, text + "mirror: {sample_rate: 0.5}\nmirror: {}\n"))
    merged = text + "base: &base {sample_rate: 0.5}\nmirror: {<<: *base, sample_rate: 0.2}\n"
    with pytest.raises(ConfigError, match="base: unknown key"):  # merge keys still read
        load_config(write(tmp_path, merged))


@pytest.mark.parametrize(
    ("admin", "loopback"),
    [
        ("127.0.0.1:1", True),
        ("127.8.9.10:1", True),
        ("[::1]:1", True),
        ("localhost:1", True),
        ("127.corp.example:1", False),
        ("0.0.0.0:1", False),
        ("10.0.0.1:1", False),
    ],
)
def test_loopback_means_an_address_only_this_machine_reaches(admin: str, loopback: bool) -> None:
    assert parse_config({**MINIMAL, "admin": admin}).admin.is_loopback is loopback


def test_a_match_with_a_literal_id_is_warned_about_not_refused(tmp_path: Path) -> None:
    config = parse_config(
        {
            **MINIMAL,
            "diff": {"endpoints": [{"match": "GET /items/7", "ignore": ["/a"]}]},
            "mirror": {"rules": [{"match": "GET /reports/2024/**", "diff": {"ignore": ["/a"]}}]},
        }
    )
    assert config.warnings() == [
        'diff.endpoints[0].match: "7" looks like an id, and comparisons see endpoints with ids '
        "folded (GET /users/{id}): this match may never apply",
        'mirror.rules[0].match (it sets diff): "2024" looks like an id, and comparisons see '
        "endpoints with ids folded (GET /users/{id}): this match may never apply",
    ]
    path = write(
        tmp_path,
        "primary: {url: 'http://a:1'}\ncandidate: {url: 'http://b:2'}\n"
        "diff: {endpoints: [{match: GET /items/7, ignore: [/a]}]}\n",
    )
    result = run_cli("check-config", str(path))
    assert result.returncode == 0
    assert 'warning: diff.endpoints[0].match: "7" looks like an id' in result.stderr
