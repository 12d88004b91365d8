"""Soak: shadowproxy for N minutes at a steady rate, mirroring everything to a flaky candidate.

The candidate fails 10% of its requests (half answered 500, half closed without an answer);
the rest differ from the primary in two fields, so every exchange is compared and logged. At a
fixed interval this records the proxy's memory (RSS of the supervisor, the workers and their
helper processes), open file descriptors (/proc/PID/fd) and asyncio tasks per process, and
prints them as it goes; at the end, memory after the first minute against memory at the end.
Figures only: nothing is asserted.

Task counts come from a benchmark-only ``sitecustomize`` (benchmarks/taskcount) put on the
proxy's PYTHONPATH: on SIGUSR2 each process writes ``len(asyncio.all_tasks())`` to a file. The
proxy itself exposes nothing new for this.

    benchmarks/soak                       # 10 minutes at 1000 requests/s
    benchmarks/soak --minutes 2 --rate 500 --interval 5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import harness
from harness import BenchError, log
from proxy_bench import available_cores, metadata, workdir, write_results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/soak",
        description="Memory, descriptors and tasks of shadowproxy over a long steady run.",
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--connections", type=int, default=20, help="wrk connections")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--failure-percent", type=float, default=10.0, help="candidate requests that fail"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="shadowproxy workers (default: one per core)"
    )
    parser.add_argument(
        "--results-dir", type=Path, default=harness.RESULTS_DIR, help="where the JSON goes"
    )
    parser.add_argument(
        "--no-install", action="store_true", help="never apt-get install nginx or wrk"
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep configs and logs")
    args = parser.parse_args(argv)
    args.workers = args.workers or available_cores()
    # The metadata shared with benchmarks/run describes the load with these.
    args.duration, args.warmup, args.threads, args.smoke = args.minutes * 60, 0.0, 1, False
    args.rounds = 1
    args.rate_connections, args.rate_duration = args.connections, args.minutes * 60
    return args


def role_of(pid: int, supervisor: int) -> str:
    command = harness.command_of(pid)
    if pid == supervisor:
        return "supervisor"
    if "--worker-index" in command:
        return "worker " + command.split("--worker-index", 1)[1].split()[0]
    if "forkserver" in command:
        return "diff pool"
    if "resource_tracker" in command:
        return "resource tracker"
    return "other"


def task_counts(pids: list[int], directory: Path) -> dict[int, int | None]:
    """Ask each process for its asyncio task count and wait briefly for the answers."""
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            (directory / str(pid)).unlink()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR2)
    counts: dict[int, int | None] = dict.fromkeys(pids)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(v is None for v in counts.values()):
        for pid in pids:
            if counts[pid] is None:
                with contextlib.suppress(FileNotFoundError, ValueError):
                    counts[pid] = int((directory / str(pid)).read_text())
        time.sleep(0.02)
    return counts


def sample(proxy: harness.ShadowProxy, tasks_dir: Path, started: float) -> dict[str, Any]:
    tree = harness.process_tree(proxy.pid)
    roles = {pid: role_of(pid, proxy.pid) for pid in tree}
    # Only the event-loop processes answer; the diff pool's helpers have no loop.
    loops = [pid for pid, role in roles.items() if role == "supervisor" or role.startswith("w")]
    tasks = task_counts(loops, tasks_dir)
    processes = [
        {
            "pid": pid,
            "role": roles[pid],
            "rss_bytes": harness.rss_bytes(pid),
            "fds": harness.open_fds(pid),
            "tasks": tasks.get(pid),
        }
        for pid in tree
    ]
    metrics = proxy.metrics()
    return {
        "t_s": round(time.monotonic() - started, 1),
        "rss_bytes": sum(p["rss_bytes"] for p in processes),
        "fds": sum(p["fds"] for p in processes),
        "tasks": sum(p["tasks"] or 0 for p in processes if p["tasks"] is not None),
        "mirrors_in_flight": metrics.get("shadowproxy_mirrors_in_flight", 0.0),
        "mirrored": metrics.get("shadowproxy_mirrored_total", 0.0),
        "log_bytes": proxy.log_path.stat().st_size if proxy.log_path.exists() else 0,
        "processes": processes,
    }


def mib(value: float) -> str:
    return f"{value / 2**20:.1f}"


def print_sample(row: dict[str, Any]) -> None:
    workers = [p for p in row["processes"] if p["role"].startswith("worker")]
    per_worker = " ".join(
        f"{mib(p['rss_bytes'])}/{p['fds']}/{p['tasks'] if p['tasks'] is not None else '?'}"
        for p in sorted(workers, key=lambda p: p["role"])
    )
    print(
        f"{row['t_s']:>7.0f} {mib(row['rss_bytes']):>9} {row['fds']:>5} {row['tasks']:>6} "
        f"{row['mirrors_in_flight']:>9.0f} {mib(row['log_bytes']):>8}   {per_worker}",
        flush=True,
    )


def summarize(samples: list[dict[str, Any]], minute: float) -> dict[str, Any]:
    """The first sample a minute in against the last one under load; the very last sample,
    taken once the load has stopped, shows what stays open when the proxy is idle."""
    loaded = [s for s in samples if not s.get("idle")] or samples
    after_first = next((s for s in loaded if s["t_s"] >= minute), loaded[0])
    end, idle = loaded[-1], samples[-1]
    growth = (end["rss_bytes"] - after_first["rss_bytes"]) / max(after_first["rss_bytes"], 1)
    return {
        "rss_after_first_minute_bytes": after_first["rss_bytes"],
        "rss_after_first_minute_at_s": after_first["t_s"],
        "rss_end_bytes": end["rss_bytes"],
        "rss_end_at_s": end["t_s"],
        "rss_growth": round(growth, 4),
        "rss_target": "within 10%",
        "rss_target_met": abs(growth) <= 0.10,
        "fds_after_first_minute": after_first["fds"],
        "fds_end": end["fds"],
        "fds_max": max(s["fds"] for s in loaded),
        "fds_idle_after": idle["fds"],
        "tasks_after_first_minute": after_first["tasks"],
        "tasks_end": end["tasks"],
        "tasks_max": max(s["tasks"] for s in loaded),
        "tasks_idle_after": idle["tasks"],
    }


def run(args: argparse.Namespace, tools: harness.Tools, work: Path) -> dict[str, Any]:
    backends = harness.start_backends(tools, work, flaky_percent=args.failure_percent)
    tasks_dir = work / "tasks"
    tasks_dir.mkdir()
    pythonpath = os.pathsep.join(
        p for p in (str(harness.TASKCOUNT_DIR), os.environ.get("PYTHONPATH", "")) if p
    )
    try:
        proxy = harness.start_shadowproxy(
            work,
            "soak",
            primary=backends.primary,
            candidate=backends.flaky_candidate,
            sample_rate=1.0,
            workers=args.workers,
            env={"PYTHONPATH": pythonpath, "SHADOWPROXY_BENCH_TASKS_DIR": str(tasks_dir)},
        )
    except BenchError:
        backends.stop()
        raise
    meta = metadata(tools, backends, args)
    meta["candidate"] = (
        f"fails {args.failure_percent:g}% (half 500, half closed without an answer); the rest "
        "differ from the primary in two fields"
    )
    samples: list[dict[str, Any]] = []
    try:
        url = f"http://127.0.0.1:{proxy.port}/api/orders/ord_7f3c2a91"
        seconds = args.minutes * 60
        wrk = harness.start_wrk(
            tools, work, url, duration=seconds, connections=args.connections, threads=1,
            rate=args.rate,
        )  # fmt: skip
        started = time.monotonic()
        print(
            f"{'t s':>7} {'RSS MiB':>9} {'fds':>5} {'tasks':>6} {'in flight':>9} "
            f"{'log MiB':>8}   per worker: RSS MiB/fds/tasks",
            flush=True,
        )
        next_at = started
        while wrk.poll() is None:
            if time.monotonic() >= next_at:
                samples.append(sample(proxy, tasks_dir, started))
                print_sample(samples[-1])
                next_at += args.interval
            time.sleep(min(0.5, max(0.0, next_at - time.monotonic())))
        stdout, _ = wrk.communicate()
        samples.append({**sample(proxy, tasks_dir, started), "idle": True})
        print_sample(samples[-1])
        load = harness.parse_wrk_output(stdout)
        metrics = proxy.metrics()
    finally:
        proxy.stop()
        backends.stop()
    seconds = load["duration_us"] / 1e6
    counters = {
        key: round(value)
        for key, value in metrics.items()
        if key.startswith(
            (
                "shadowproxy_requests_total",
                "shadowproxy_mirrored_total",
                "shadowproxy_mirror_skipped_total",
                "shadowproxy_candidate_errors_total",
                "shadowproxy_comparisons_total",
                "shadowproxy_log_records_lost_total",
            )
        )
    }
    return {
        "meta": meta,
        "load": {
            "requests": load["requests"],
            "rps": round(load["requests"] / seconds, 1),
            "p50_ms": load["p50_us"] / 1000,
            "p99_ms": load["p99_us"] / 1000,
            "max_ms": load["max_us"] / 1000,
            "errors": {k[7:]: v for k, v in load.items() if k.startswith("errors_")},
        },
        "counters": counters,
        "summary": summarize(samples, min(60.0, seconds / 2)),
        "samples": samples,
    }


def print_summary(data: dict[str, Any]) -> None:
    s, load = data["summary"], data["load"]
    print()
    print(
        f"load: {load['requests']} requests, {load['rps']:.0f}/s, p50 {load['p50_ms']:.2f} ms, "
        f"p99 {load['p99_ms']:.2f} ms, client-visible errors {sum(load['errors'].values())}"
    )
    for key, value in sorted(data["counters"].items()):
        print(f"  {key} {value}")
    print(
        f"memory: {mib(s['rss_after_first_minute_bytes'])} MiB at "
        f"{s['rss_after_first_minute_at_s']:.0f} s, {mib(s['rss_end_bytes'])} MiB at "
        f"{s['rss_end_at_s']:.0f} s: "
        f"{s['rss_growth']:+.1%} (target within 10%: "
        f"{'met' if s['rss_target_met'] else 'MISSED'})"
    )
    print(
        f"file descriptors: {s['fds_after_first_minute']} -> {s['fds_end']} (max {s['fds_max']}, "
        f"{s['fds_idle_after']} once the load stopped); asyncio tasks: "
        f"{s['tasks_after_first_minute']} -> {s['tasks_end']} (max {s['tasks_max']}, "
        f"{s['tasks_idle_after']} once the load stopped)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        tools = harness.ensure_tools(install=not args.no_install)
    except BenchError as error:
        print(f"benchmarks/soak: {error}", file=sys.stderr)
        return 2
    harness.raise_fd_limit()
    harness.exit_on_sigterm()
    log(
        f"soak: {args.minutes:g} min at {args.rate:g} requests/s, 100% mirrored, candidate "
        f"failing {args.failure_percent:g}%"
    )
    with workdir(args.keep_workdir) as work:
        try:
            data = run(args, tools, work)
        except BenchError as error:
            print(f"benchmarks/soak: {error}", file=sys.stderr)
            return 1
    print_summary(data)
    path = write_results(data, args.results_dir, prefix="soak")
    print(f"\nresults: {path} (and {path.parent / 'latest-soak.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
