"""Helpers shared by the report tests: writing logs of given records."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest


@pytest.fixture
def write_log(tmp_path: Path) -> Callable[..., Path]:
    """``write_log(name, records, extra_lines=())``: a JSON Lines file (gzip for ``.gz``)."""

    def write(
        name: str, records: Iterable[dict[str, Any]], extra_lines: Iterable[bytes] = ()
    ) -> Path:
        path = tmp_path / name
        data = b"".join(orjson.dumps(r) + b"\n" for r in records) + b"".join(extra_lines)
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
        return path

    return write
