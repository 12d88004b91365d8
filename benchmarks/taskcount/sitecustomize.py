"""Benchmark-only instrumentation: lets ``benchmarks/soak`` count a proxy's asyncio tasks.

Put on ``PYTHONPATH`` together with ``SHADOWPROXY_BENCH_TASKS_DIR``, this makes every Python
process started with that environment write ``len(asyncio.all_tasks())`` to
``$SHADOWPROXY_BENCH_TASKS_DIR/<pid>`` when it receives SIGUSR2 (-1 when no event loop runs).
Nothing in the proxy changes; without the variable this module does nothing but hand over to
any other ``sitecustomize`` further down the path.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

_DIRECTORY = os.environ.get("SHADOWPROXY_BENCH_TASKS_DIR")

if _DIRECTORY:
    import asyncio
    import signal

    def _write_task_count(signum: int, frame: object) -> None:
        try:
            count = len(asyncio.all_tasks(asyncio.get_running_loop()))
        except RuntimeError:
            count = -1
        path = os.path.join(_DIRECTORY, str(os.getpid()))
        with open(path + ".tmp", "w") as file:
            file.write(f"{count}\n")
        os.replace(path + ".tmp", path)

    signal.signal(signal.SIGUSR2, _write_task_count)


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_chain()
