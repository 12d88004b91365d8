"""``benchmarks/run --smoke``: every case runs and its results land in the JSON.

Needs nginx and wrk (``make sysdeps``). Without them the test is skipped, except in CI (the
``CI`` environment variable set), where a benchmark that silently stopped running would go
unnoticed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "benchmarks" / "run"
CASES = ("direct", "nginx_proxy", "nginx_mirror", "nginx_mirror_plain", "sp_off", "sp_mirror")
CANDIDATES = ("healthy", "slow")
RUN_TIMEOUT = 140  # about 50 s on the reference machine: twelve short cases


def _missing_tools() -> list[str]:
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    return [name for name, path in (("nginx", nginx), ("wrk", shutil.which("wrk"))) if not path]


def _require_tools() -> None:
    missing = _missing_tools()
    if missing:
        reason = f"{' and '.join(missing)} not installed (make sysdeps)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: the benchmark smoke run must run in CI")
        pytest.skip(reason)


@pytest.mark.e2e
@pytest.mark.timeout(150)
def test_smoke_run_measures_every_case(tmp_path: Path) -> None:
    _require_tools()
    completed = subprocess.run(
        [str(RUN), "--smoke", "--no-install", "--results-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:] + completed.stdout[-3000:]

    stamped = list(tmp_path.glob("proxy-*.json"))
    assert len(stamped) == 1
    data = json.loads((tmp_path / "latest.json").read_text())
    assert data == json.loads(stamped[0].read_text())

    measured = {(row["case"], row["candidate"]): row for row in data["cases"]}
    assert set(measured) == {(case, c) for case in CASES for c in CANDIDATES}
    for key, row in measured.items():
        assert row["throughput"]["requests"] > 0, key
        assert row["throughput"]["rps"] > 0, key
        assert row["fixed_rate"]["rps"] > 0, key
    assert measured["sp_mirror", "healthy"]["shadowproxy"]["mirrored"] > 0
    assert set(data["ratios"]["targets"]) == {
        "sp_mirror_over_nginx_mirror",
        "sp_mirror_over_sp_off",
        "sp_mirror_slow_over_healthy",
        "sp_mirror_added_p50_ms",
    }


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_a_short_soak_samples_and_summarises(tmp_path: Path) -> None:
    _require_tools()
    short = ("--minutes", "0.1", "--interval", "2", "--rate", "200", "--no-install")
    completed = subprocess.run(
        [str(REPO / "benchmarks" / "soak"), *short, "--results-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:] + completed.stdout[-3000:]
    data = json.loads((tmp_path / "latest-soak.json").read_text())
    assert data["load"]["requests"] > 0
    assert sum(data["load"]["errors"].values()) == 0  # candidate failures never reach clients
    assert len(data["samples"]) >= 2
    assert data["summary"]["rss_end_bytes"] > 0
