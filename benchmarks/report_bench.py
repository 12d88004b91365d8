"""Time ``shadowproxy report`` over a generated discrepancy log and measure its peak memory.

    .venv/bin/python benchmarks/report_bench.py               # 1,000,000 records
    .venv/bin/python benchmarks/report_bench.py --quick       # 100,000 records
    .venv/bin/python benchmarks/report_bench.py --records 250000 --gzip --check

The log is written to a temporary directory by the same generator the tests use; the report
runs in a child process (``python -m shadowproxy.report``) so that its peak RSS is its own.
``--check`` exits 1 when the run misses the budget scaled to the record count (10 s and
1 GiB per million records).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shadowproxy.report.synthetic import write_log

FULL_RECORDS = 1_000_000
QUICK_RECORDS = 100_000
BUDGET_SECONDS_PER_MILLION = 10.0
BUDGET_RSS_BYTES = 1 << 30


def run_report(log: Path, output: str, out_dir: Path) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of one report run in a child process."""
    command = [sys.executable, "-m", "shadowproxy.report", "report", str(log)]
    if output == "json":
        command.append("--json")
    elif output == "html":
        command += ["--json", "--html", str(out_dir / "report.html")]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    # ru_maxrss of children is the largest of any child so far: runs go smallest first.
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, peak_kib / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, help=f"records to generate ({FULL_RECORDS:,})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RECORDS:,} records")
    parser.add_argument("--gzip", action="store_true", help="write and read a .gz log")
    parser.add_argument("--check", action="store_true", help="exit 1 when over budget")
    args = parser.parse_args(argv)
    records = args.records or (QUICK_RECORDS if args.quick else FULL_RECORDS)

    with tempfile.TemporaryDirectory(prefix="report-bench-") as tmp:
        out_dir = Path(tmp)
        log = out_dir / ("exchanges.jsonl.gz" if args.gzip else "exchanges.jsonl")
        started = time.perf_counter()
        write_log(log, records)
        size_mib = os.path.getsize(log) / (1 << 20)
        print(
            f"generated {records:,} records ({size_mib:,.0f} MiB) "
            f"in {time.perf_counter() - started:.1f} s"
        )
        budget = BUDGET_SECONDS_PER_MILLION * max(records, 1) / FULL_RECORDS
        worst = 0.0
        for output in ("json", "terminal", "html"):
            seconds, peak_mib = run_report(log, output, out_dir)
            worst = max(worst, seconds)
            rate = records / seconds
            print(
                f"report --{output:<8} {seconds:6.2f} s  {rate:>9,.0f} records/s  "
                f"peak RSS {peak_mib:,.0f} MiB"
            )
        print(f"budget: {budget:.1f} s and {BUDGET_RSS_BYTES >> 20:,} MiB")
        over = worst > budget or peak_mib * (1 << 20) > BUDGET_RSS_BYTES
        if args.check and over:
            print("over budget", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
