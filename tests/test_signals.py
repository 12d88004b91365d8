"""Held signals wait, and are handled once released."""

from __future__ import annotations

import signal
from types import FrameType

from shadowproxy import signals


def test_a_held_signal_is_handled_on_release_not_before() -> None:
    received: list[int] = []

    def handler(signum: int, _: FrameType | None) -> None:
        received.append(signum)

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        signals.hold(signal.SIGUSR1)
        signal.raise_signal(signal.SIGUSR1)
        assert signal.SIGUSR1 in signal.sigpending()
        assert received == []
        signals.release(signal.SIGUSR1)
        assert received == [signal.SIGUSR1]
        assert signal.SIGUSR1 not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    finally:
        signals.release(signal.SIGUSR1)
        signal.signal(signal.SIGUSR1, previous)
