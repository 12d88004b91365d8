"""Using every core: a supervisor process and N worker processes sharing one port.

The supervisor reserves the proxy port, starts workers that each bind it with SO_REUSEPORT
(the kernel spreads connections across them), serves the admin listener with metrics summed
over all workers, watches the config file, and passes signals on. Workers are whole proxies
without an admin listener; they append to one discrepancy log, whole lines per write.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import ssl
import sys
import time
from pathlib import Path

from aiohttp import web

from shadowproxy import channel, oplog, signals
from shadowproxy.admin import LiveReport, build_admin_app
from shadowproxy.compare import RuleBook
from shadowproxy.config import (
    Config,
    ConfigError,
    parse_config_text,
    read_config_text,
    without_credentials,
)
from shadowproxy.follow import LogFollower
from shadowproxy.metrics import SupervisorMetrics, forget_process, render_all_workers
from shadowproxy.record import OUTPUT_DRAIN_TIMEOUT
from shadowproxy.relay import LineRelay
from shadowproxy.report.live import LiveView
from shadowproxy.server import address_text, bind, listener_tls_context, warn_about
from shadowproxy.shares import DemandBoard
from shadowproxy.watch import FileWatcher

WORKER_START_TIMEOUT = 30.0
# A worker that dies is started again, but not in a tight loop: after RESTART_DELAY seconds,
# doubled at each death in a row up to MAX_RESTART_DELAY, and back to the first once a worker
# has run for STABLE_AFTER seconds.
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
STABLE_AFTER = 60.0


class WorkerStartError(Exception):
    """A worker did not come up: at start the supervisor stops the others and exits."""


class Supervisor:
    def __init__(
        self,
        config: Config,
        config_text: str,
        config_path: Path,
        workers: int,
        *,
        demand_file: Path | None = None,
    ) -> None:
        """``demand_file``: where the workers share ``mirror.max_rps`` (see shares.py);
        created here, and without it each worker takes an even split."""
        self.config = config
        self.config_path = config_path
        # A worker started again gets the text the proxy started with, then the one in force:
        # it sets up what only a restart changes (backends, listeners) as its siblings did,
        # and runs its siblings' config, even when the file has since been edited into one
        # that does not load.
        self._start_text = self._config_text = config_text
        self.count = workers
        self.log = oplog.get(role="supervisor")
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = False
        self._port = 0
        self._tls_port = 0
        self._follower: LogFollower | None = None
        self._started = False
        self._channels: dict[int, asyncio.WriteTransport] = {}
        """Per worker, the pipe its config texts go through (see channel.py)."""
        self._watcher: FileWatcher | None = None
        self._live = LiveView()
        self._serving: set[int] = set()
        """Workers that said they were ready and have not exited since."""
        self._metrics = SupervisorMetrics()
        self._relay: LineRelay | None = None
        """With ``log.path: "-"``: the workers' records pass through here (see relay.py)."""
        self._demand_file = demand_file
        if demand_file is not None:
            DemandBoard.create(demand_file, workers)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # SIGHUP is held since cmd_run, and workers inherit the hold: one sent while they
        # start waits until they can reload. The supervisor releases its own once every
        # worker is there to take it on.
        loop.add_signal_handler(signal.SIGHUP, self.on_hangup)
        if self.config.log.path == "-":
            self._relay = LineRelay(
                sys.stdout.fileno() if sys.stdout is not None else None,  # None: closed
                self.config.log.max_buffer_bytes,
                self._live.add,
                self.log,
                on_lost=self._metrics.log_lost.inc,
            )
        # Holds the port (one number for every worker, even with port 0); never listens.
        reserved = bind(self.config.listen, "listen", reuse_port=True)
        self._port = reserved.getsockname()[1]
        reserved_tls = None
        if self.config.listen_tls is not None:
            reserved_tls = bind(self.config.listen_tls.address, "listen_tls", reuse_port=True)
            self._tls_port = reserved_tls.getsockname()[1]
        if self.config.reload.watch:
            # The file as loaded is the baseline; a change during start-up still counts.
            self._watcher = FileWatcher(
                self.config_path, self.config.reload.poll_interval, self.reload
            )
        admin_runner = None
        try:
            await asyncio.gather(*(self._start_worker(i) for i in range(self.count)))
            admin_runner, admin_address = await self._start_admin()
            self._started = True
            signals.release(signal.SIGHUP)
            self._announce(admin_address)
            if self._watcher is not None:
                self._watcher.start()
            await self._supervise(stop)
        finally:
            # Signals stay handled until the end: a second SIGTERM must not cut the drain short.
            await self._stop_workers()
            self._close_channels()
            if self._relay is not None:
                await self._relay.close(OUTPUT_DRAIN_TIMEOUT)
            if self._watcher is not None:
                await self._watcher.stop()
            if admin_runner is not None:
                await admin_runner.cleanup()
            if self._follower is not None:
                await self._follower.stop()
            reserved.close()
            if reserved_tls is not None:
                reserved_tls.close()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if self._relay is not None:
                self.log.info("stopped", log_records_lost=self._relay.lost)
            else:
                self.log.info("stopped")

    async def _start_worker(self, index: int) -> None:
        read_fd, write_fd = os.pipe()
        config_fd, config_out = os.pipe()
        records_in, records_out = os.pipe() if self._relay is not None else (None, None)
        command = [
            sys.executable, "-m", "shadowproxy", "run", "--config", str(self.config_path),
            "--config-fd", str(config_fd),
            "--workers", str(self.count), "--worker-index", str(index),
            "--listen-port", str(self._port),
            *(("--listen-tls-port", str(self._tls_port)) if self._tls_port else ()),
            "--ready-fd", str(write_fd),
            *(("--demand-file", str(self._demand_file)) if self._demand_file else ()),
        ]  # fmt: skip
        signals.hold(signal.SIGHUP)  # a restarted worker is as exposed as the first
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                pass_fds=(write_fd, config_fd),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=records_out,  # None: the supervisor's own
            )
        except BaseException:
            for fd in (read_fd, config_out, records_in):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            for fd in (write_fd, config_fd, records_out):
                if fd is not None:
                    os.close(fd)
            if self._started:  # not a mask saved and restored: restarts may overlap
                signals.release(signal.SIGHUP)
        if self._relay is not None and records_in is not None:
            await self._relay.attach(records_in)
        self.processes[index] = process
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(WORKER_START_TIMEOUT):
                self._open_channel(index, await channel.sender(config_out))
                ready = await loop.run_in_executor(None, os.read, read_fd, 16)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()  # stuck: it would hold its slot for good
            raise WorkerStartError(
                f"worker {index} was not ready within {WORKER_START_TIMEOUT:g} s"
            ) from None
        finally:
            os.close(read_fd)
        if not ready:
            code = await process.wait()
            # The worker has said why on standard error ("cannot start: ...").
            raise WorkerStartError(f"worker {index} exited during start-up with code {code}")
        self._serving.add(index)
        self._metrics.serving.set(len(self._serving))

    async def _start_admin(self) -> tuple[web.AppRunner, tuple[str, int]]:
        if self._relay is None:
            # Workers share the log file, so the live report follows it.
            self._follower = LogFollower(Path(self.config.log.path), self._live.add)
            self._follower.start()
        report = LiveReport(summary=self._live.summary, title=self._live.title)
        app = build_admin_app(
            config=lambda: self.config,
            metrics=render_all_workers,
            report=report,
            serving=lambda: bool(self._serving),
        )
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        sock = bind(self.config.admin, "admin")
        await web.SockSite(runner, sock).start()
        return runner, sock.getsockname()[:2]

    def _announce(self, admin: tuple[str, int]) -> None:
        tls = self.config.listen_tls
        self.log.info(
            "listening",
            proxy=address_text(self.config.listen.host, self._port),
            admin=address_text(*admin),
            tls=address_text(tls.address.host, self._tls_port) if tls is not None else None,
            workers=self.count,
            primary=without_credentials(self.config.primary.url),
            candidate=without_credentials(self.config.candidate.url),
            config_digest=self.config.digest(),
            pid=os.getpid(),
        )
        warn_about(self.config, self.log)

    async def _supervise(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        watchers = [loop.create_task(self._watch(i, stop)) for i in self.processes]
        await stop.wait()
        self._stopping = True
        self.log.info("stopping")
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)

    async def _stop_workers(self) -> None:
        """SIGTERM to every worker: each finishes its requests and flushes its log lines."""
        self._stopping = True
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        await asyncio.gather(*(p.wait() for p in self.processes.values()))

    async def _watch(self, index: int, stop: asyncio.Event) -> None:
        """Start a worker again when it dies while the proxy is meant to run."""
        delay = RESTART_DELAY
        while not stop.is_set():
            started = time.monotonic()
            process = self.processes[index]
            code = await process.wait()
            forget_process(process.pid)
            self._serving.discard(index)
            self._metrics.serving.set(len(self._serving))
            if self._stopping:
                return
            self._metrics.exits.inc()
            if time.monotonic() - started >= STABLE_AFTER:
                delay = RESTART_DELAY
            self.log.error("worker_exited", worker=index, code=code, restart_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY)
            if not self._stopping:  # set by a SIGTERM during the wait
                try:
                    await self._start_worker(index)
                except (WorkerStartError, OSError) as error:  # OSError: not even spawned
                    self.log.error("worker_start_failed", worker=index, error=str(error))
                else:
                    self.log.info("worker_restarted", worker=index)

    def on_hangup(self) -> None:
        """SIGHUP: every worker reopens its log, even if the file does not load; then the
        config is reloaded."""
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGHUP)
        self.reload()

    def reload(self) -> bool:
        """Validate first; only a valid file is passed on, as the same text to every worker."""
        if self._watcher is not None:
            self._watcher.mark_current()  # a SIGHUP's reload is not the watcher's to repeat
        try:
            text = read_config_text(self.config_path)
            new = self.config.reloaded(parse_config_text(text, str(self.config_path)))
            RuleBook.from_config(new.effective_diff())
        except (ConfigError, ValueError) as error:
            self._metrics.reloads.labels("invalid").inc()
            self.log.error("config_reload_failed", path=str(self.config_path), error=str(error))
            return False
        if new.listen_tls is not None:
            try:  # what every worker would find: refused once, here, and sent to none
                listener_tls_context(new.listen_tls)
            except (OSError, ssl.SSLError) as error:
                self._metrics.reloads.labels("invalid").inc()
                self.log.error("tls_reload_failed", error=str(error))
                return False
        self.config, self._config_text = new, text
        if self._relay is not None:
            self._relay.configure(new.log.max_buffer_bytes)
        for transport in self._channels.values():
            if not transport.is_closing():  # a worker gone; its successor starts with the text
                transport.write(channel.frame(text))
        self._metrics.reloads.labels("ok").inc()
        self.log.info("config_reloaded", digest=new.digest(), workers=self.count)
        warn_about(new, self.log)
        return True

    def _open_channel(self, index: int, transport: asyncio.WriteTransport) -> None:
        """The worker's config channel, with the start text and the text in force first: in
        one step, so that a reload either comes before (and is that text) or sees the
        channel."""
        transport.write(channel.frame(self._start_text))
        if self._config_text is not self._start_text:
            transport.write(channel.frame(self._config_text, catch_up=True))
        old = self._channels.pop(index, None)
        if old is not None:
            old.close()
        self._channels[index] = transport

    def _close_channels(self) -> None:
        for transport in self._channels.values():
            transport.close()
        self._channels.clear()


def run_supervisor(
    config: Config, config_text: str, config_path: Path, workers: int, metrics_dir: Path
) -> None:
    try:
        demand_file = metrics_dir / "mirror-demand"
        supervisor = Supervisor(config, config_text, config_path, workers, demand_file=demand_file)
        asyncio.run(supervisor.run())
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
