"""The machine-readable report (``shadowproxy report --json``, the admin's ``/report.json``).

Schema ``shadowproxy.report/1``: one JSON object. Rates are fractions (0..1) or null when
nothing was compared; latencies are milliseconds, within ``limits.latency_relative_error``
(1 %) of the exact nearest-rank percentile; times are ISO 8601 UTC.

```
{
  "schema": "shadowproxy.report/1",
  "generated_at": "2026-11-27T18:40:13.123Z",
  "window": {"first": time | null, "last": time | null,     # of the exchanges counted
             "since": time | null, "until": time | null,    # the filters given
             "endpoints": [pattern, ...]},
  "input": {"sources": [file, ...], "lines": n, "exchanges": n,
            "corrupted": n,      # lines that are not JSON objects (skipped)
            "invalid": n,        # exchange records missing fields a report needs (skipped)
            "other_events": n,   # records with another "event" (ignored)
            "filtered_out": n},  # exchanges outside --since/--until/--endpoint
  "overall": Endpoint,           # every endpoint together ("paths" and "examples" empty)
  "endpoints": [Endpoint, ...],  # worst first: highest (mismatches + errors) / compared
  "timeseries": {"bucket_seconds": s,
                 "buckets": [{"start": time, "compared": n, "mismatches": n,
                              "candidate_errors": n}, ...]},   # oldest first, gaps filled
  "latency_bins_ms": [upper bound, ...],   # bins of Endpoint.latency_ms.histogram
  "limits": {"max_endpoints": n, "max_paths_per_endpoint": n, "examples_per_outcome": n,
             "max_time_buckets": n, "latency_relative_error": 0.01}
}

Endpoint = {
  "endpoint": "GET /users/{id}",     # "(other endpoints)" past max_endpoints
  "compared": n, "matches": n, "mismatches": n, "candidate_errors": n,
  "match_rate": r, "mismatch_rate": r, "error_rate": r,
  "difference_count": n,             # differences in all mismatches, listed or not
  "candidate_error_kinds": {"timeout": n, ...},
  "status_pairs": [{"primary": 200, "candidate": 500 | "timeout", "count": n}, ...],
  "status_pairs_other": n,
  "paths": [Path, ...],              # most exchanges first; array indices as "*"
  "paths_other_exchanges": n, "paths_other_occurrences": n,   # past max_paths_per_endpoint
  "noise_paths": [Path, ...],        # differences the proxy classed as noise
  "latency_ms": {
    "primary": Latency, "candidate": Latency, "secondary": Latency | null,
    "p50_ratio": r | null, "p95_ratio": r | null, "p99_ratio": r | null,  # candidate/primary
    "histogram": {"primary": [n, ...], "candidate": [n, ...], "secondary": [...]}},
  "secondary_errors": n,
  "examples": [Example, ...]         # the first mismatches, then the first candidate errors
}
Path = {"where": "body" | "header" | "status", "path": "/items/*/price",
        "exchanges": n, "occurrences": n, "kinds": {"changed": n, ...},
        "example": {"path": "/items/3/price", "kind": k, "primary": v, "candidate": v}}
Latency = {"count": n, "mean": ms, "p50": ms, "p95": ms, "p99": ms, "max": ms}
          # exchanges both sides answered: failures are counted in error_rate, not here
Example = the log record's id, ts, method, path, outcome, primary, candidate, secondary,
          differences, difference_count, body_kind, notes and excerpt; values longer than
          1000 characters of JSON are replaced by their cut JSON text.
```
"""

from __future__ import annotations

from typing import Any

import orjson

from shadowproxy.report.summary import Summary


def _fallback(value: Any) -> str:
    # Records handed over by the live proxy may hold values orjson does not know.
    return str(value)


def to_json(summary: Summary, *, indent: bool = False) -> bytes:
    """The summary as UTF-8 JSON in the schema above."""
    option = orjson.OPT_INDENT_2 if indent else 0
    return orjson.dumps(summary, default=_fallback, option=option | orjson.OPT_NON_STR_KEYS)


def to_dict(summary: Summary) -> dict[str, Any]:
    """The summary as plain JSON values (a round trip through ``to_json``)."""
    result: dict[str, Any] = orjson.loads(to_json(summary))
    return result
