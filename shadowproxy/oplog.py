"""The proxy's own operational log: JSON lines on standard error, for people and collectors.

Distinct from the discrepancy log (``record.py``), which holds one line per compared exchange.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from shadowproxy import logsafe


def configure(level: int = logging.INFO) -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=logsafe.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.BytesLoggerFactory(sys.stderr.buffer),
        cache_logger_on_first_use=True,
    )


def get(**context: Any) -> Any:
    return structlog.get_logger("shadowproxy", **context)
