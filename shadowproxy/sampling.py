"""The sampling decision: pure, cheap, made once per request before anything is sent."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from shadowproxy.config import MirrorConfig


class SkipReason(enum.StrEnum):
    """Why a request was not mirrored; each one is a metrics label."""

    SAMPLING = "sampling"
    METHOD = "method"
    BODY_SIZE = "body_size"
    IN_FLIGHT = "in_flight"
    RATE_LIMIT = "rate_limit"
    BREAKER = "breaker"
    COMPARE_QUEUE = "compare_queue"
    PRIMARY_FAILED = "primary_failed"
    CLIENT_ABORTED = "client_aborted"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True, slots=True)
class Decision:
    mirror: bool
    reason: SkipReason | None = None


MIRROR = Decision(mirror=True)


class Sampler:
    """Decides, per request, whether a copy goes to the candidate."""

    def __init__(self, config: MirrorConfig, rng: random.Random | None = None) -> None:
        self._methods = frozenset(config.methods)
        self._rate = config.sample_rate
        self._max_body = config.max_body_bytes
        self._random = (rng or random.Random()).random

    def decide(self, method: str, content_length: int | None) -> Decision:
        if method not in self._methods:
            return Decision(False, SkipReason.METHOD)
        if self._rate < 1.0 and self._random() >= self._rate:
            return Decision(False, SkipReason.SAMPLING)
        if content_length is not None and content_length > self._max_body:
            return Decision(False, SkipReason.BODY_SIZE)
        return MIRROR
