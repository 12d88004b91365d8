"""A proxy that cannot start says why in one line and exits 1: no traceback, nothing left open."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from tests.conftest import run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def run(tmp_path: Path, workers: int, **config: Any) -> subprocess.CompletedProcess[str]:
    base = {
        "listen": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
        "primary": {"url": "http://127.0.0.1:1"},
        "candidate": {"url": "http://127.0.0.1:2"},
        "log": {"path": str(tmp_path / "log.jsonl")},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**base, **config}))
    return run_cli("run", "--config", str(path), "--workers", str(workers), timeout=45)


def assert_clean_failure(result: subprocess.CompletedProcess[str], reason: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "shadowproxy: cannot start:" in result.stderr
    assert reason in result.stderr
    # What start-up had already built (connection pools, comparison workers) was closed.
    assert "Traceback" not in result.stderr
    assert "Unclosed" not in result.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_in_use(tmp_path: Path, taken_port: int, workers: int) -> None:
    result = run(tmp_path, workers, listen=f"127.0.0.1:{taken_port}")
    assert_clean_failure(result, f"listen 127.0.0.1:{taken_port}: Address already in use")


def test_an_admin_port_in_use_is_named_as_such(tmp_path: Path, taken_port: int) -> None:
    result = run(tmp_path, 1, admin=f"127.0.0.1:{taken_port}")
    assert_clean_failure(result, f"admin 127.0.0.1:{taken_port}: Address already in use")


def test_a_capture_file_that_cannot_be_opened(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("")
    result = run(tmp_path, 1, capture={"path": str(tmp_path / "plain-file" / "capture.jsonl")})
    assert_clean_failure(result, "plain-file")


def test_a_worker_that_cannot_start_stops_the_supervisor(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("")
    result = run(tmp_path, 2, capture={"path": str(tmp_path / "plain-file" / "capture.jsonl")})
    assert_clean_failure(result, "exited during start-up with code 1")
    assert "plain-file" in result.stderr  # the worker's own reason, above the supervisor's


def tls_files(tmp_path: Path, ca: trustme.CA, host: str) -> tuple[Path, Path, Path]:
    """A certificate for ``host``, its key, and the key of another certificate."""
    identity = ca.issue_cert(host)
    cert, key, other_key = tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "other.key"
    identity.cert_chain_pems[0].write_to_path(str(cert))
    identity.private_key_pem.write_to_path(str(key))
    ca.issue_cert("elsewhere").private_key_pem.write_to_path(str(other_key))
    return cert, key, other_key


def test_a_tls_pair_that_cannot_be_loaded_names_the_key_at_fault(
    tmp_path: Path, ca: trustme.CA
) -> None:
    cert, key, other_key = tls_files(tmp_path, ca, "127.0.0.1")
    for cert_file, key_file, reason in (
        (key, key, f"listen_tls.cert_file: {key}: not a PEM certificate"),
        (cert, cert, f"listen_tls.key_file: {cert}: not a PEM private key"),
        (cert, other_key, f"listen_tls.key_file: {other_key}: not the private key of"),
    ):
        listener = {
            "address": "127.0.0.1:0",
            "cert_file": str(cert_file),
            "key_file": str(key_file),
        }
        assert_clean_failure(run(tmp_path, 1, listen_tls=listener), reason)


def test_an_upstream_tls_file_that_cannot_be_loaded_names_the_key_at_fault(
    tmp_path: Path, ca: trustme.CA
) -> None:
    cert, key, _ = tls_files(tmp_path, ca, "client")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    for tls, reason in (
        ({"ca_file": str(junk)}, f"candidate.tls.ca_file: {junk}: no PEM certificate in it"),
        (
            {"cert_file": str(junk), "key_file": str(key)},
            f"candidate.tls.cert_file: {junk}: not a PEM certificate",
        ),
        (
            {"cert_file": str(cert), "key_file": str(cert)},
            f"candidate.tls.key_file: {cert}: not a PEM private key",
        ),
    ):
        candidate = {"url": "https://127.0.0.1:2", "tls": tls}
        assert_clean_failure(run(tmp_path, 1, candidate=candidate), reason)


def test_check_config_finds_what_start_up_would_refuse_in_tls_files(
    tmp_path: Path, ca: trustme.CA
) -> None:
    cert, key, other_key = tls_files(tmp_path, ca, "127.0.0.1")
    path = tmp_path / "config.yaml"
    base = {"primary": {"url": "http://127.0.0.1:1"}, "candidate": {"url": "http://127.0.0.1:2"}}
    for key_file, reason in (
        (other_key, f"listen_tls.key_file: {other_key}: not the private key of"),
        (tmp_path / "absent.key", "listen_tls.key_file: "),
    ):
        listener = {"address": "127.0.0.1:0", "cert_file": str(cert), "key_file": str(key_file)}
        path.write_text(yaml.safe_dump({**base, "listen_tls": listener}))
        result = run_cli("check-config", str(path))
        assert result.returncode == 2, result.stdout
        assert reason in result.stderr
        assert "Traceback" not in result.stderr
    listener = {"address": "127.0.0.1:0", "cert_file": str(cert), "key_file": str(key)}
    path.write_text(yaml.safe_dump({**base, "listen_tls": listener}))
    assert run_cli("check-config", str(path)).returncode == 0
