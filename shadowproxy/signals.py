"""Holding signals a process cannot act on yet, so that they wait instead of killing it.

SIGHUP's default action ends a process. A worker still importing its modules, or a proxy
still opening its listeners, has no handler for it yet, and a reload asked for in that
moment would kill it. A blocked signal stays pending and is delivered when unblocked, and
the mask passes to child processes, so a worker started with SIGHUP held is covered from
its first instruction and reloads once it is ready.
"""

from __future__ import annotations

import signal


def hold(sig: signal.Signals) -> None:
    """Keep ``sig`` pending for this thread (and the threads and processes it starts)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {sig})


def release(sig: signal.Signals) -> None:
    """Deliver ``sig`` again; one that arrived while held is handled now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
