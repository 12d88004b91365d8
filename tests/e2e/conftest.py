"""The real ``shadowproxy run`` process, started with a real config file."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.conftest import merge

STARTUP_TIMEOUT = 20.0
RECORD_POLL_INTERVAL = 0.05


@dataclass
class ProxyProcess:
    process: asyncio.subprocess.Process
    config_path: Path
    log_path: Path
    url: str = ""
    admin_url: str = ""
    stderr_lines: list[dict[str, Any]] = field(default_factory=list)
    _stderr_task: asyncio.Task[None] | None = None
    _new_line: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def wait_started(self) -> None:
        assert self.process.stderr is not None
        async with asyncio.timeout(STARTUP_TIMEOUT):
            while True:
                line = await self.process.stderr.readline()
                if not line:
                    raise RuntimeError(
                        f"shadowproxy exited early: {await self.process.wait()}\n"
                        + "\n".join(map(str, self.stderr_lines))
                    )
                event = self._parse(line)
                if event.get("event") == "listening":
                    self.url = f"http://{event['proxy']}"
                    self.admin_url = f"http://{event['admin']}"
                    break
        self._stderr_task = asyncio.get_running_loop().create_task(self._drain_stderr())

    def _parse(self, line: bytes) -> dict[str, Any]:
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            event = {"raw": line.decode(errors="replace")}
        self.stderr_lines.append(event)
        return event if isinstance(event, dict) else {"raw": event}

    async def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self._parse(line)
            async with self._new_line:
                self._new_line.notify_all()

    def events(self, name: str) -> list[dict[str, Any]]:
        """The operational log's events called ``name`` so far, in order."""
        return [e for e in self.stderr_lines if e.get("event") == name]

    def count(self, name: str) -> int:
        return len(self.events(name))

    async def wait_count(self, name: str, count: int, timeout: float = 10.0) -> None:
        """Wait until the operational log holds ``count`` events called ``name``."""
        await self.wait_until(lambda: self.count(name) >= count, timeout)

    async def wait_until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``done()``, asked again at each line of the operational log."""
        async with asyncio.timeout(timeout), self._new_line:
            await self._new_line.wait_for(done)

    async def wait_event(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        """Wait for the process to report ``name`` in its operational log."""

        def found() -> dict[str, Any] | None:
            return next((e for e in self.stderr_lines if e.get("event") == name), None)

        async with asyncio.timeout(timeout), self._new_line:
            await self._new_line.wait_for(lambda: found() is not None)
        event = found()
        assert event is not None
        return event

    def lines(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        out = []
        for raw in self.log_path.read_bytes().splitlines():
            if raw.strip():
                out.append(orjson.loads(raw))
        return out

    def records(self) -> list[dict[str, Any]]:
        return [r for r in self.lines() if r.get("event") == "exchange"]

    async def wait_records(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Poll the log file until it holds ``count`` exchange records."""
        async with asyncio.timeout(timeout):
            # A file gives no event to await; poll it.
            while len(records := self.records()) < count:  # noqa: ASYNC110
                await asyncio.sleep(RECORD_POLL_INTERVAL)
        return records

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.process.returncode is None:
            self.process.send_signal(sig)
        return await self.exited(timeout)

    async def exited(self, timeout: float = 20.0) -> int:
        """Wait for the process to end on its own (or by a signal sent with ``os.kill``).

        Sending it another signal instead would make ``Popen.send_signal`` reap a process
        that has just died, and asyncio's child watcher would report 255 for it.
        """
        async with asyncio.timeout(timeout):
            code = await self.process.wait()
        if self._stderr_task is not None:
            await self._stderr_task
        return code


StartProxy = Callable[..., Awaitable[ProxyProcess]]


@pytest.fixture
async def start_proxy(tmp_path: Path) -> AsyncIterator[StartProxy]:
    """Write a config file and start ``python -m shadowproxy run --config FILE``."""
    processes: list[ProxyProcess] = []

    async def start(
        primary: str,
        candidate: str,
        /,
        *,
        args: tuple[str, ...] = (),
        on_spawn: Callable[[asyncio.subprocess.Process], None] | None = None,
        stdout: int = asyncio.subprocess.DEVNULL,
        **overrides: Any,
    ) -> ProxyProcess:
        index = len(processes)
        log_path = tmp_path / f"discrepancies-{index}.jsonl"
        base: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
            "primary": {"url": primary},
            "candidate": {"url": candidate, "timeout": 3},
            "log": {"path": str(log_path), "flush_interval": 0.05},
        }
        config_path = tmp_path / f"config-{index}.yaml"
        config_path.write_text(yaml.safe_dump(merge(base, overrides)))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shadowproxy", "run", "--config", str(config_path), *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stdout,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )  # fmt: skip
        running = ProxyProcess(process, config_path, log_path)
        processes.append(running)
        if on_spawn is not None:  # before it listens
            on_spawn(process)
        await running.wait_started()
        return running

    yield start
    for running in processes:
        if running.process.returncode is None:
            running.process.terminate()
            try:
                async with asyncio.timeout(10):
                    await running.process.wait()
            except TimeoutError:
                running.process.kill()
                await running.process.wait()
        if running._stderr_task is not None:
            running._stderr_task.cancel()
            await asyncio.gather(running._stderr_task, return_exceptions=True)
