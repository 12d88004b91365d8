"""Comparisons per second of the diff engine, on one core.

Measures the whole path a mirrored response takes once both answers are in: the inline fast
path, and the detailed engine when the fast path cannot settle it (run here in-process, as a
worker would). Every pair is compared afresh, except in the "seen before" row, which shows a
pair the proxy's memo of body comparisons already holds. DeepDiff on the 1 KB pair is
measured for reference.

    .venv/bin/python benchmarks/diff_bench.py            # full run, about a minute
    .venv/bin/python benchmarks/diff_bench.py --quick    # smoke run, a few seconds
    .venv/bin/python benchmarks/diff_bench.py --json results.json
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shadowproxy.compare import Comparer, Comparison, RuleBook
from shadowproxy.compare.fast import quick_compare
from shadowproxy.compare.memo import BodyMemo
from shadowproxy.compare.pool import run_engine
from shadowproxy.config import DiffConfig
from shadowproxy.exchange import Response

SEED = 20240611
HEADERS = (
    ("Content-Type", "application/json; charset=utf-8"),
    ("Cache-Control", "no-cache, max-age=0"),
    ("Vary", "Accept-Encoding"),
    ("X-Service", "orders"),
    ("Server", "primary/1.0"),
)
# The candidate's headers differ where any two responses differ: date, server, request id.
CANDIDATE_HEADERS = (
    ("Date", "Tue, 11 Jun 2024 10:00:01 GMT"),
    ("content-type", "application/json; charset=UTF-8"),
    ("Cache-Control", "no-cache,max-age=0"),
    ("Vary", "Accept-Encoding"),
    ("X-Service", "orders"),
    ("Server", "candidate/2.0"),
    ("X-Request-Id", "4f1c2a"),
)


def _record(rng: random.Random, index: int) -> dict[str, Any]:
    """An order as a typical JSON API returns it: about 1 KB serialised."""
    return {
        "id": index,
        "uuid": f"{rng.getrandbits(128):032x}",
        "status": rng.choice(["pending", "paid", "shipped", "delivered"]),
        "created_at": f"2024-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T12:34:56Z",
        "customer": {
            "id": rng.randint(1, 10**6),
            "name": rng.choice(["Ada Lovelace", "Alan Turing", "Grace Hopper"]),
            "email": f"user{rng.randint(1, 10**6)}@example.com",
            "vip": rng.random() < 0.1,
            "address": {
                "street": f"{rng.randint(1, 999)} Main Street",
                "city": rng.choice(["Berlin", "Lisbon", "Oslo"]),
                "zip": f"{rng.randint(10000, 99999)}",
                "country": "DE",
            },
        },
        "items": [
            {
                "sku": f"SKU-{rng.randint(1000, 9999)}",
                "qty": rng.randint(1, 5),
                "price": round(rng.uniform(1, 200), 2),
                "tags": rng.sample(["red", "blue", "sale", "new", "eco"], 2),
            }
            for _ in range(3)
        ],
        "shipping": {
            "method": rng.choice(["standard", "express"]),
            "tracking": f"TRK{rng.getrandbits(40):010X}",
            "eta": f"2024-0{rng.randint(1, 9)}-2{rng.randint(0, 8)}",
        },
        "payment": {
            "method": rng.choice(["card", "paypal", "invoice"]),
            "last4": f"{rng.randint(0, 9999):04d}",
            "captured": rng.random() < 0.9,
        },
        "history": [
            {"at": f"2024-06-{day:02d}T08:00:00Z", "event": event}
            for day, event in zip(range(1, 4), ["created", "paid", "packed"], strict=True)
        ],
        "total": round(rng.uniform(10, 1000), 2),
        "currency": "EUR",
        "channel": rng.choice(["web", "ios", "android"]),
        "locale": rng.choice(["de-DE", "en-GB", "pt-PT"]),
        "coupon": None,
        "notes": None,
        "flags": {"gift": False, "express": rng.random() < 0.3},
    }


def _document(target_bytes: int, rng: random.Random) -> Any:
    if target_bytes <= 2000:
        return _record(rng, 1)
    records: list[dict[str, Any]] = []
    size = 0
    while size < target_bytes:
        records.append(_record(rng, len(records) + 1))
        size += len(orjson.dumps(records[-1]))
    return {"data": records, "page": {"size": len(records), "next": None}}


def _changed(doc: Any, rng: random.Random, changes: int) -> Any:
    other = copy.deepcopy(doc)
    if "data" not in other:
        other["status"] = "refunded"
        other["customer"]["address"]["zip"] = "00000"
        return other
    records = other["data"]
    for n, index in enumerate(rng.sample(range(len(records)), changes)):
        record = records[index]
        match n % 4:
            case 0:
                record["total"] = round(record["total"] + 0.01, 2)
            case 1:
                record["customer"]["vip"] = not record["customer"]["vip"]
            case 2:
                record["items"][0]["qty"] = str(record["items"][0]["qty"])
            case _:
                record["flags"]["new_flag"] = True
    return other


def _response(doc: Any, headers: tuple[tuple[str, str], ...] = HEADERS) -> Response:
    body = orjson.dumps(doc)
    return Response(status=200, headers=headers, body=body, size=len(body), latency_ms=1.0)


POOL_IN_FLIGHT = 64


@dataclass
class Row:
    case: str
    body_bytes: int
    ops_per_s: float
    ms_per_op: float
    differences: int
    target: str = ""
    met: bool | None = None


def _rate(run: Callable[[], object], seconds: float, max_ops: int) -> tuple[float, float]:
    """(ops per second, ms per op) over at least ``seconds`` or ``max_ops`` runs."""
    run()  # warm caches, not measured
    ops = 0
    start = time.perf_counter()
    elapsed = 0.0
    while elapsed < seconds and ops < max_ops:
        run()
        ops += 1
        elapsed = time.perf_counter() - start
    return ops / elapsed, elapsed / ops * 1000


async def _pool_rate(primary: Response, candidate: Response, count: int) -> tuple[float, float]:
    """Throughput through `Comparer` with one worker process: the event loop's side of the
    work (fast path, pickling, futures) and the worker's run on two processes, two cores."""
    comparer = Comparer(DiffConfig(workers=1, max_queue=POOL_IN_FLIGHT))
    await comparer.start()
    slots = asyncio.Semaphore(POOL_IN_FLIGHT)

    async def one() -> None:
        async with slots:
            result = await comparer.compare("GET /orders/{id}", primary, candidate)
            assert result is not None

    try:
        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        elapsed = time.perf_counter() - start
    finally:
        await comparer.close()
    return count / elapsed, elapsed / count * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--json", metavar="OUT", type=Path, help="write results as JSON")
    parser.add_argument(
        "--no-pool", action="store_true", help="skip the round trip through a worker process"
    )
    args = parser.parse_args(argv)
    seconds = 0.3 if args.quick else 3.0

    rng = random.Random(SEED)
    rules = RuleBook.from_config(DiffConfig()).for_endpoint("GET /orders/{id}")

    def full_path(primary: Response, candidate: Response) -> Comparison:
        # The engine runs as in a worker process: run_engine, without the cyclic collector.
        return quick_compare(primary, candidate, rules) or run_engine(primary, candidate, rules)

    docs = {
        "1 KB": _document(1000, rng),
        "100 KB": _document(100_000, rng),
        "5 MB": _document(5_000_000, rng),
    }
    changes = {"1 KB": 2, "100 KB": 10, "5 MB": 200}
    targets: dict[str, tuple[str, Callable[[float, float], bool]]] = {
        "identical 1 KB": (">= 50,000/s", lambda ops, ms: ops >= 50_000),
        "2 changed 1 KB": (">= 5,000/s", lambda ops, ms: ops >= 5_000),
        "200 changed 5 MB": ("< 1 s", lambda ops, ms: ms < 1000),
    }
    pairs = {
        size: (
            _response(doc),
            _response(doc, CANDIDATE_HEADERS),
            _response(_changed(doc, rng, changes[size]), CANDIDATE_HEADERS),
        )
        for size, doc in docs.items()
    }
    # A worker holds only the responses it compares; freezing the generated data keeps the
    # collector from walking millions of objects a worker would not have.
    gc.collect()
    gc.freeze()
    rows: list[Row] = []
    for size, (primary, same, differing) in pairs.items():
        for label, candidate in (
            (f"identical {size}", same),
            (f"{changes[size]} changed {size}", differing),
        ):
            result = full_path(primary, candidate)
            max_ops = 3 if size == "5 MB" and args.quick else 1_000_000
            ops, ms = _rate(partial(full_path, primary, candidate), seconds, max_ops)
            target, check = targets.get(label, ("", lambda ops, ms: True))
            rows.append(
                Row(
                    label,
                    len(primary.body),
                    ops,
                    ms,
                    result.total,
                    target,
                    check(ops, ms) if target else None,
                )
            )

    # The proxy remembers body comparisons: the same pair again costs a digest and a lookup.
    memo = BodyMemo()
    primary, _, differing = pairs["1 KB"]
    seen = quick_compare(primary, differing, rules, memo)
    assert seen is not None
    ops, ms = _rate(partial(quick_compare, primary, differing, rules, memo), seconds, 1_000_000)
    rows.append(Row("2 changed 1 KB, seen before", len(primary.body), ops, ms, seen.total))

    from deepdiff import DeepDiff

    a, b = docs["1 KB"], _changed(docs["1 KB"], rng, 2)
    ops, ms = _rate(lambda: DeepDiff(a, b), seconds, 1_000_000)
    rows.append(Row("deepdiff 2 changed 1 KB", len(orjson.dumps(a)), ops, ms, 2))

    if not args.no_pool:
        primary, _, differing = pairs["100 KB"]
        ops, ms = asyncio.run(_pool_rate(primary, differing, 200 if args.quick else 2000))
        rows.append(Row("pool, 1 worker: 10 chg 100 KB", len(primary.body), ops, ms, 10))

    print(f"{'case':<28}{'body':>12}{'ops/s':>12}{'ms/op':>10}{'diffs':>7}  target")
    for row in rows:
        verdict = "" if row.met is None else (" ok" if row.met else " MISSED")
        print(
            f"{row.case:<28}{row.body_bytes:>12,}{row.ops_per_s:>12,.0f}{row.ms_per_op:>10.3f}"
            f"{row.differences:>7}  {row.target}{verdict}"
        )
    if args.json:
        args.json.write_text(
            orjson.dumps([asdict(r) for r in rows], option=orjson.OPT_INDENT_2).decode()
        )
    return 0 if all(row.met is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
