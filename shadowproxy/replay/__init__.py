"""Replay: captured traffic sent again to a candidate (and live backends), compared, logged.

``shadowproxy replay CAPTURE... --candidate URL`` writes the same discrepancy log as the proxy,
so ``shadowproxy report`` and ``shadowproxy verdict`` read it unchanged; ``--verdict`` judges
it in the same step. See ``engine`` for what is sent and compared, ``cli`` for the command.
"""

from shadowproxy.replay.engine import Pacer, Replayer, ReplayStats, Targets

__all__ = ["Pacer", "ReplayStats", "Replayer", "Targets"]
