"""shadowproxy against nginx's mirror module, on this machine, in one go.

Five cases, each with a healthy candidate and with one that answers 200 ms late:

  1. direct         wrk straight to the primary (the floor)
  2. nginx_proxy    nginx proxy_pass to the primary
  3. nginx_mirror   nginx proxy_pass plus ``mirror`` of every request to the candidate
  4. sp_off         shadowproxy with mirror.sample_rate 0
  5. sp_mirror      shadowproxy mirroring and comparing every request; the candidate's JSON
                    differs from the primary's in two fields, so every exchange is a logged
                    mismatch

Each case gets a closed-loop wrk run at full speed (requests/s, p50/p99) and a run at a fixed
moderate rate, where latency is service time rather than queueing (the added p50 over direct).
The cases run in rounds, each round every case once, and the figures are medians over the
rounds: a shared machine speeds up and slows down by tens of percent within minutes, and a
ratio taken within one round compares cases measured minutes apart at most.
wrk, the backends and the proxy share this machine's cores; see benchmarks/README.md.

    benchmarks/run                  # 3 rounds of 5 s per measurement, about 7 minutes
    benchmarks/run --smoke          # a few seconds per case, for CI
    benchmarks/run --duration 30 --connections 100 --only nginx_mirror,sp_mirror
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
from harness import BenchError, Tools, log

from shadowproxy.cli import available_cores

CANDIDATES = ("healthy", "slow")


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    mirrors: bool
    """Whether any traffic goes to the candidate in this case."""


CASES = (
    Case("direct", "1 direct to primary", mirrors=False),
    Case("nginx_proxy", "2 nginx proxy_pass", mirrors=False),
    Case("nginx_mirror", "3 nginx + mirror", mirrors=True),
    # The mirror module's documented setup: nginx opens a new upstream connection per request
    # (HTTP/1.0), the configuration most mirrors run with.
    Case("nginx_mirror_plain", "3b nginx + mirror, docs", mirrors=True),
    Case("sp_off", "4 shadowproxy, sample 0", mirrors=False),
    Case("sp_mirror", "5 shadowproxy, 100% + diff", mirrors=True),
)
CASE_KEYS = tuple(c.key for c in CASES)
OTHER_LOAD_WARNING = 0.1
ROUND_SPREAD_NOTE = 0.15
"""A case whose throughput differs more than this between its slowest and fastest round is
named under the table: its median is less certain than the others'."""

TARGETS = {
    "sp_mirror_over_nginx_mirror": 1.0,
    "sp_mirror_over_sp_off": 0.70,  # mirroring and diffing everything costs under 30%
    "sp_mirror_slow_over_healthy": 0.95,
    "sp_mirror_added_p50_ms": 1.0,
}


@dataclass
class Target:
    url: str
    pids: Callable[[], list[int]]
    metrics: Callable[[], dict[str, float]] | None
    stop: Callable[[], None]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run",
        description="Throughput and latency of shadowproxy next to nginx's mirror module.",
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument(
        "--rounds", type=int, default=3, help="times every case runs; figures are medians"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load, discarded")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument(
        "--rate", type=float, default=1000.0, help="requests/s of the fixed-rate measurement"
    )
    parser.add_argument(
        "--rate-connections", type=int, default=20, help="wrk connections at the fixed rate"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="shadowproxy workers (default: one per core)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="2 s per case, no warm-up: checks that it all runs"
    )
    parser.add_argument(
        "--only", default=",".join(CASE_KEYS), help=f"cases to run, of {','.join(CASE_KEYS)}"
    )
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help="healthy, slow or both")
    parser.add_argument(
        "--results-dir", type=Path, default=harness.RESULTS_DIR, help="where the JSON goes"
    )
    parser.add_argument(
        "--no-install", action="store_true", help="never apt-get install nginx or wrk"
    )
    parser.add_argument(
        "--slow-candidate",
        choices=("auto", "nginx", "asyncio"),
        default="auto",
        help="what delays the slow candidate: nginx's echo module (auto: when installed) or a "
        "small asyncio server",
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep configs and logs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.duration, args.warmup, args.rate_duration, args.rounds = 2.0, 0.0, 1.0, 1
    else:
        args.rate_duration = args.duration
    args.only = [c for c in args.only.split(",") if c]
    args.candidates = [c for c in args.candidates.split(",") if c]
    unknown = sorted(set(args.only) - set(CASE_KEYS)) + sorted(
        set(args.candidates) - set(CANDIDATES)
    )
    if unknown:
        parser.error(f"unknown case or candidate: {', '.join(unknown)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.workers is None:
        args.workers = available_cores()
    return args


def start_target(
    case: Case,
    candidate_port: int,
    backends: harness.Backends,
    tools: Tools,
    workdir: Path,
    workers: int,
) -> Target:
    name = f"{case.key}-{candidate_port}"
    if case.key == "direct":
        return Target(f"http://127.0.0.1:{backends.primary}", lambda: [], None, lambda: None)
    if case.key.startswith("nginx"):
        candidate = candidate_port if case.mirrors else None
        server, port = harness.start_nginx_proxy(
            tools,
            workdir,
            name,
            primary=backends.primary,
            candidate=candidate,
            keepalive=case.key != "nginx_mirror_plain",
        )
        return Target(
            f"http://127.0.0.1:{port}",
            lambda: harness.process_tree(server.pid),
            None,
            server.stop,
        )
    proxy = harness.start_shadowproxy(
        workdir,
        name,
        primary=backends.primary,
        candidate=candidate_port,
        sample_rate=1.0 if case.key == "sp_mirror" else 0.0,
        workers=workers,
    )
    return Target(
        f"http://127.0.0.1:{proxy.port}",
        lambda: harness.process_tree(proxy.pid),
        proxy.metrics,
        proxy.stop,
    )


def mirror_counts(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """What shadowproxy did with the measured requests: mirrored, skipped by reason, compared."""

    def delta(prefix: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for key, value in after.items():
            if key.startswith(prefix):
                label = key[len(prefix) :].strip("{}")
                out[label or "total"] = round(value - before.get(key, 0.0))
        return {k: v for k, v in out.items() if v}

    return {
        "answered": sum(delta("shadowproxy_requests_total").values()),
        "mirrored": delta("shadowproxy_mirrored_total").get("total", 0),
        "skipped": delta("shadowproxy_mirror_skipped_total"),
        "compared": sum(delta("shadowproxy_comparisons_total").values()),
        "candidate_errors": delta("shadowproxy_candidate_errors_total"),
        "log_records_lost": delta("shadowproxy_log_records_lost_total").get("total", 0),
    }


def measure(
    case: Case,
    candidate: str,
    backends: harness.Backends,
    tools: Tools,
    workdir: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    port = backends.candidate if candidate == "healthy" else backends.slow_candidate
    target = start_target(case, port, backends, tools, workdir, args.workers)
    path = "/api/orders/ord_7f3c2a91"
    url = target.url + path
    try:
        if args.warmup > 0:
            run = harness.run_wrk
            run(
                tools, workdir, url, duration=args.warmup,
                connections=args.connections, threads=args.threads,
            )  # fmt: skip
        before = target.metrics() if target.metrics else {}
        groups = {"proxy": target.pids(), "backends": backends.pids()}
        with harness.cpu_meter(groups) as cpu:
            load = harness.run_wrk(
                tools, workdir, url, duration=args.duration,
                connections=args.connections, threads=args.threads,
            )  # fmt: skip
        after = target.metrics() if target.metrics else {}
        fixed = harness.run_wrk(
            tools, workdir, url, duration=args.rate_duration,
            connections=args.rate_connections, threads=1, rate=args.rate,
        )  # fmt: skip
    finally:
        target.stop()
    cpu["wrk"] = load.wrk_cpu_s
    # Whatever else ran meanwhile (other tests, builds) competed for the same cores.
    cpu["other"] = round(max(0.0, cpu["machine"] - cpu["proxy"] - cpu["backends"] - cpu["wrk"]), 3)
    result: dict[str, Any] = {
        "case": case.key,
        "label": case.label,
        "candidate": candidate,
        "throughput": load.as_dict(),
        "fixed_rate": {"target_rps": args.rate, **fixed.as_dict()},
        "cpu_seconds": cpu,
        "proxy_cpu_us_per_request": (
            round(cpu["proxy"] / load.requests * 1e6, 1) if load.requests and cpu["proxy"] else None
        ),
    }
    if target.metrics is not None:
        result["shadowproxy"] = mirror_counts(before, after)
    return result


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def ratios(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The ratios between cases measured in one round (without the targets)."""

    def get(case: str, candidate: str, section: str, field: str) -> float | None:
        for r in results:
            if r["case"] == case and r["candidate"] == candidate:
                return float(r[section][field])
        return None

    def rps(case: str, candidate: str) -> float | None:
        return get(case, candidate, "throughput", "rps")

    def added_p50(case: str, candidate: str) -> float | None:
        p50 = get(case, candidate, "fixed_rate", "p50_ms")
        direct = get("direct", candidate, "fixed_rate", "p50_ms")
        return None if p50 is None or direct is None else round(p50 - direct, 3)

    return {
        "sp_mirror_over_nginx_mirror": {
            c: ratio(rps("sp_mirror", c), rps("nginx_mirror", c)) for c in CANDIDATES
        },
        "sp_mirror_over_nginx_mirror_plain": {
            c: ratio(rps("sp_mirror", c), rps("nginx_mirror_plain", c)) for c in CANDIDATES
        },
        # What mirroring costs nginx itself, to set beside (5)/(4).
        "nginx_mirror_over_nginx_proxy": {
            c: ratio(rps("nginx_mirror", c), rps("nginx_proxy", c)) for c in CANDIDATES
        },
        "sp_off_over_nginx_proxy": {
            c: ratio(rps("sp_off", c), rps("nginx_proxy", c)) for c in CANDIDATES
        },
        "sp_mirror_over_sp_off": {
            c: ratio(rps("sp_mirror", c), rps("sp_off", c)) for c in CANDIDATES
        },
        "slow_over_healthy": {
            case: ratio(rps(case, "slow"), rps(case, "healthy"))
            for case in ("nginx_mirror", "nginx_mirror_plain", "sp_mirror")
        },
        "added_p50_ms": {
            c: {case.key: added_p50(case.key, c) for case in CASES[1:]} for c in CANDIDATES
        },
    }


def with_targets(out: dict[str, Any]) -> dict[str, Any]:
    """``out`` (from `ratios`) with each target's value, bound and whether it is met."""
    values = {
        "sp_mirror_over_nginx_mirror": out["sp_mirror_over_nginx_mirror"]["healthy"],
        "sp_mirror_over_sp_off": out["sp_mirror_over_sp_off"]["healthy"],
        "sp_mirror_slow_over_healthy": out["slow_over_healthy"]["sp_mirror"],
        "sp_mirror_added_p50_ms": out["added_p50_ms"]["healthy"]["sp_mirror"],
    }
    targets = {}
    for name, value in values.items():
        below = name.endswith("_ms")
        met = None if value is None else value < TARGETS[name] if below else value >= TARGETS[name]
        bound = f"{'<' if below else '>='} {TARGETS[name]:g}"
        targets[name] = {"value": value, "target": bound, "met": met}
    return {**out, "targets": targets}


def median_of(values: list[Any]) -> Any:
    """The median of each number, key by key through nested dicts; other values from the
    first. A number missing from some rounds (an error kind seen once) counts from those it
    is in."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    first = present[0]
    if isinstance(first, dict):
        keys = dict.fromkeys(k for v in present if isinstance(v, dict) for k in v)
        return {k: median_of([v.get(k) for v in present if isinstance(v, dict)]) for k in keys}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        middle = statistics.median(v for v in present if isinstance(v, (int, float)))
        return round(middle, 3) if isinstance(middle, float) else middle
    return first


def combine_rounds(
    rounds: list[list[dict[str, Any]]],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Each case's median row (its rounds kept under ``rounds``) and the median of the ratios
    taken within each round, with the targets judged on those."""
    rows = [{**median_of(list(runs)), "rounds": list(runs)} for runs in zip(*rounds, strict=True)]
    per_round = [ratios(r) for r in rounds]
    return rows, {**with_targets(median_of(per_round)), "by_round": per_round}


def metadata(tools: Tools, backends: harness.Backends, args: argparse.Namespace) -> dict[str, Any]:
    def git(*command: str) -> str:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            return subprocess.run(
                ["git", "-C", str(harness.REPO), *command],
                capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
        return ""

    try:
        import uvloop  # type: ignore[import-not-found]

        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "asyncio (uvloop not installed)"
    return {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "kernel": platform.release(),
        "cores": available_cores(),
        "python": platform.python_version(),
        "event_loop": loop,
        **tools.versions(),
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_proxy_changes": bool(git("status", "--porcelain", "shadowproxy")),
        "slow_candidate": backends.slow_kind,
        "shadowproxy_workers": args.workers,
        "nginx_proxy_workers": "auto (one per core)",
        "backends": "one nginx, 1 worker, serving ~1.2 KB JSON files",
        "shared_machine": (
            "wrk, the backends and the proxy under test all run on these cores; absolute "
            "numbers are lower than on separate machines, ratios are what to compare"
        ),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "threads": args.threads,
            "fixed_rate_rps": args.rate,
            "fixed_rate_connections": args.rate_connections,
            "fixed_rate_duration_s": args.rate_duration,
            "rounds": args.rounds,
            "smoke": args.smoke,
        },
    }


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def round_range(row: dict[str, Any]) -> tuple[float, float]:
    """The lowest and highest throughput a case measured over its rounds."""
    values = [float(r["throughput"]["rps"]) for r in row.get("rounds", [row])]
    return min(values), max(values)


def print_report(data: dict[str, Any]) -> None:
    meta, rows, r = data["meta"], data["cases"], data["ratios"]
    s = meta["settings"]
    dirty = " (+ uncommitted changes)" if meta["uncommitted_proxy_changes"] else ""
    print()
    print(
        f"shadowproxy {meta['commit']}{dirty}, {meta['shadowproxy_workers']} workers, "
        f"{meta['event_loop']}; {meta['nginx']}; {meta['cores']} cores shared by wrk, "
        "backends and proxy"
    )
    rounds = s.get("rounds", 1)
    print(
        f"wrk -c{s['connections']} -t{s['threads']}, {s['duration_s']:g} s per case, "
        f"{rounds} round{'s' if rounds != 1 else ''} (medians); fixed rate "
        f"{s['fixed_rate_rps']:g}/s over {s['fixed_rate_connections']} connections; "
        f"slow candidate: {meta['slow_candidate']}"
    )
    print()
    header = (
        f"{'case':<27} {'candidate':<9} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'err':>4} | "
        f"{'@rate/s':>7} {'p50 ms':>7} {'p99 ms':>7} | {'CPU us/req':>10} {'mirrored':>8} "
        f"{'other':>5}"
    )
    print(header)
    print("-" * len(header))
    noisy = []
    for row in rows:
        t, f, cpu = row["throughput"], row["fixed_rate"], row["cpu_seconds"]
        errors = sum(t["errors"].values())
        mirrored = "-"
        if "shadowproxy" in row and row["shadowproxy"]["answered"]:
            sp = row["shadowproxy"]
            mirrored = f"{sp['mirrored'] / sp['answered']:.0%}"
        elif row["case"].startswith("nginx_mirror"):
            mirrored = "100%"
        other = cpu["other"] / max(t["duration_s"] * meta["cores"], 1e-9)
        if other > OTHER_LOAD_WARNING:
            noisy.append(f"{row['case']}/{row['candidate']}")
        print(
            f"{row['label']:<27} {row['candidate']:<9} {t['rps']:>7.0f} {t['p50_ms']:>7.2f} "
            f"{t['p99_ms']:>7.2f} {errors:>4} | {f['rps']:>7.0f} {f['p50_ms']:>7.2f} "
            f"{f['p99_ms']:>7.2f} | {fmt(row['proxy_cpu_us_per_request'], '.0f'):>10} "
            f"{mirrored:>8} {other:>5.0%}"
        )
    print(
        "\n(mirrored: share of the measured requests copied to the candidate; other: the "
        "machine's CPU used by\nprocesses outside the benchmark during the measurement)"
    )
    if noisy:
        print(
            f"warning: other processes used more than {OTHER_LOAD_WARNING:.0%} of the machine "
            f"during {', '.join(noisy)}; those figures are low"
        )
    spread = []
    for row in rows:
        low, high = round_range(row)
        if low and high / low - 1 > ROUND_SPREAD_NOTE:
            spread.append(f"  {row['case']}/{row['candidate']}: {low:,.0f}-{high:,.0f} requests/s")
    if spread:
        print(
            f"throughput differed by more than {ROUND_SPREAD_NOTE:.0%} between rounds (the "
            "machine's speed changed during the run):"
        )
        print("\n".join(spread))
    print()
    print("ratios")
    for candidate in CANDIDATES:
        value = r["sp_mirror_over_nginx_mirror"][candidate]
        plain = r["sp_mirror_over_nginx_mirror_plain"][candidate]
        off = r["sp_off_over_nginx_proxy"][candidate]
        own = r["sp_mirror_over_sp_off"][candidate]
        nginx_own = r["nginx_mirror_over_nginx_proxy"][candidate]
        print(
            f"  {candidate:<7} throughput (5)/(3) {fmt(value, '.2f')}, "
            f"(5)/(3b) {fmt(plain, '.2f')}, (4)/(2) {fmt(off, '.2f')}, "
            f"(5)/(4) {fmt(own, '.2f')}, (3)/(2) {fmt(nginx_own, '.2f')}"
        )
    for case in ("nginx_mirror", "nginx_mirror_plain", "sp_mirror"):
        print(f"  slow/healthy throughput of {case}: {fmt(r['slow_over_healthy'][case], '.2f')}")
    if len(r.get("by_round", ())) > 1:
        for name, label in (
            ("sp_mirror_over_nginx_mirror", "(5)/(3)"),
            ("sp_mirror_over_sp_off", "(5)/(4)"),
            ("nginx_mirror_over_nginx_proxy", "(3)/(2)"),
        ):
            each = ", ".join(fmt(one[name]["healthy"], ".2f") for one in r["by_round"])
            print(f"  healthy {label} in each round: {each}")
    for candidate in CANDIDATES:
        added = r["added_p50_ms"][candidate]
        parts = ", ".join(f"{k} {fmt(v, '+.2f')}" for k, v in added.items())
        print(f"  {candidate:<7} added p50 at {s['fixed_rate_rps']:g}/s, ms: {parts}")
    print()
    print("targets")
    for name, entry in r["targets"].items():
        met = {True: "met", False: "MISSED", None: "not measured"}[entry["met"]]
        print(f"  {name:<30} {fmt(entry['value'], '.3f'):>8}  target {entry['target']:<7} {met}")


def write_results(data: dict[str, Any], directory: Path, prefix: str = "proxy") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = directory / f"{prefix}-{stamp}.json"
    text = json.dumps(data, indent=2) + "\n"
    latest = directory / ("latest.json" if prefix == "proxy" else f"latest-{prefix}.json")
    for target in (path, latest):
        tmp = target.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(target)
    return path


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="shadowproxy-bench-"))
    try:
        yield path
    finally:
        if keep:
            log(f"configs and logs kept in {path}")
        else:
            subprocess.run(["rm", "-rf", str(path)], check=False)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        tools = harness.ensure_tools(install=not args.no_install)
    except BenchError as error:
        print(f"benchmarks/run: {error}", file=sys.stderr)
        return 2
    if args.slow_candidate == "nginx" and tools.echo_module is None:
        print(
            f"benchmarks/run: nginx's echo module is not installed "
            f"(apt-get install {harness.ECHO_PACKAGE})",
            file=sys.stderr,
        )
        return 2
    harness.raise_fd_limit()
    harness.exit_on_sigterm()
    started = time.monotonic()
    with workdir(args.keep_workdir) as work:
        try:
            backends = harness.start_backends(
                tools, work, slow_in_nginx=args.slow_candidate != "asyncio"
            )
        except BenchError as error:
            print(f"benchmarks/run: {error}", file=sys.stderr)
            return 1
        try:
            meta = metadata(tools, backends, args)
            rounds = []
            for number in range(1, args.rounds + 1):
                rows = []
                for candidate in args.candidates:
                    for case in CASES:
                        if case.key not in args.only:
                            continue
                        log(f"round {number}/{args.rounds}: {case.label} ({candidate} candidate)")
                        rows.append(measure(case, candidate, backends, tools, work, args))
                rounds.append(rows)
        except BenchError as error:
            print(f"benchmarks/run: {error}", file=sys.stderr)
            return 1
        finally:
            backends.stop()
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    rows, summary = combine_rounds(rounds)
    data = {"meta": meta, "cases": rows, "ratios": summary}
    print_report(data)
    path = write_results(data, args.results_dir)
    print(f"\nresults: {path} (and {path.parent / 'latest.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
