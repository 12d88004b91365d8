"""Assembling the proxy: listeners, sessions, the mirror, the comparer, the log; signals, reload
and graceful shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from pathlib import Path
from typing import Any

from aiohttp import web
from yarl import URL

from shadowproxy import oplog
from shadowproxy.admin import build_admin_app
from shadowproxy.compare import Comparer
from shadowproxy.compare.model import Comparison
from shadowproxy.config import Config, ConfigError, HostPort, load_config
from shadowproxy.exchange import Exchange
from shadowproxy.forward import PrimaryPath
from shadowproxy.metrics import Metrics
from shadowproxy.mirror import MirrorDispatcher
from shadowproxy.record import LogWriter, build_record, outcome_of
from shadowproxy.upstream import make_session

# How long /readyz waits for a TCP connection to the primary.
READY_PROBE_TIMEOUT = 1.0
LISTEN_BACKLOG = 1024


def bind(address: HostPort, *, reuse_port: bool = False) -> socket.socket:
    """A listening-ready socket; SO_REUSEPORT lets worker processes share one port."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((address.host, address.port))
    sock.setblocking(False)
    return sock


class Proxy:
    """One running proxy: the proxy listener and the admin listener in this process."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None = None,
        proxy_socket: socket.socket | None = None,
        admin_socket: socket.socket | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self._proxy_socket = proxy_socket
        self._admin_socket = admin_socket
        self.metrics = Metrics()
        self.log = oplog.get()
        self._runners: list[web.BaseRunner] = []
        self.proxy_address: tuple[str, int] | None = None
        self.admin_address: tuple[str, int] | None = None

    async def start(self) -> None:
        config = self.config
        self.writer = LogWriter(config.log, on_lost=self.metrics.log_lost.inc, oplog=self.log)
        self.writer.start()
        self.primary_session = make_session(config.primary, stream_timeout=True)
        self.candidate_session = make_session(config.candidate, stream_timeout=False)
        self.comparer = Comparer(config.diff)
        await self.comparer.start()
        self.dispatcher = MirrorDispatcher(
            config,
            candidate_session=self.candidate_session,
            compare=self.comparer.compare,
            metrics=self.metrics,
            sinks=[self._record],
        )
        self.primary_path = PrimaryPath(
            config, session=self.primary_session, mirror=self.dispatcher, metrics=self.metrics
        )

        server = web.Server(self.primary_path.handle, auto_decompress=False)
        proxy_runner = web.ServerRunner(
            server, shutdown_timeout=config.shutdown_timeout, access_log=None
        )
        await proxy_runner.setup()
        self._runners.append(proxy_runner)
        proxy_sock = self._proxy_socket or bind(config.listen)
        await web.SockSite(proxy_runner, proxy_sock, backlog=LISTEN_BACKLOG).start()
        self.proxy_address = proxy_sock.getsockname()[:2]

        admin_app = build_admin_app(
            config=lambda: self.config, metrics=self.metrics, ready=self._primary_reachable
        )
        admin_runner = web.AppRunner(admin_app, access_log=None, shutdown_timeout=1.0)
        await admin_runner.setup()
        self._runners.append(admin_runner)
        admin_sock = self._admin_socket or bind(config.admin)
        await web.SockSite(admin_runner, admin_sock).start()
        self.admin_address = admin_sock.getsockname()[:2]
        self.log.info(
            "listening",
            proxy=f"{self.proxy_address[0]}:{self.proxy_address[1]}",
            admin=f"{self.admin_address[0]}:{self.admin_address[1]}",
            primary=config.primary.url,
            candidate=config.candidate.url,
            config_digest=config.digest(),
        )

    def _record(self, exchange: Exchange, comparison: Comparison | None) -> None:
        record = build_record(exchange, comparison)
        self.writer.write(record)
        outcome = outcome_of(exchange.candidate, comparison)
        endpoint = self.metrics.endpoint_label(exchange.endpoint)
        self.metrics.comparisons.labels(outcome.value, endpoint).inc()

    async def _primary_reachable(self) -> bool:
        url = URL(self.config.primary.url)
        try:
            async with asyncio.timeout(READY_PROBE_TIMEOUT):
                _, writer = await asyncio.open_connection(url.host, url.port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    def reload(self) -> bool:
        """Validate the config file again and swap it in; the old one stays on any error."""
        if self.config_path is None:
            return False
        try:
            new = load_config(self.config_path)
        except ConfigError as error:
            self.metrics.reloads.labels("invalid").inc()
            self.log.error("config_reload_failed", path=str(self.config_path), error=str(error))
            return False
        unchanged = _restart_only_changes(self.config, new)
        if unchanged:
            self.log.warning(
                "config_reload_partial",
                detail="these keys take effect only after a restart",
                keys=unchanged,
            )
        self.config = new
        self.primary_path.configure(new)
        self.dispatcher.configure(new)
        self.comparer.update(new.diff)
        self.writer.reopen()
        self.metrics.reloads.labels("ok").inc()
        self.writer.event("config_reloaded", digest=new.digest(), path=str(self.config_path))
        self.log.info("config_reloaded", digest=new.digest())
        return True

    async def stop(self) -> None:
        """Stop accepting, finish client requests, give mirrors a grace period, flush the log."""
        proxy_runner, *others = self._runners
        await proxy_runner.cleanup()
        cancelled = await self.dispatcher.drain(self.config.mirror.shutdown_grace)
        for runner in others:
            await runner.cleanup()
        await self.comparer.close()
        await self.primary_session.close()
        await self.candidate_session.close()
        self.log.info("stopped", mirrors_cancelled=cancelled, log_records_lost=self.writer.lost)
        await self.writer.close()


def _restart_only_changes(old: Config, new: Config) -> list[str]:
    keys = ("listen", "admin", "primary", "candidate", "log")
    return [k for k in keys if getattr(old, k) != getattr(new, k)]


async def serve(config: Config, config_path: Path | None = None, **sockets: Any) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads the config."""
    proxy = Proxy(config, config_path=config_path, **sockets)
    await proxy.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, proxy.reload)
    try:
        await stop.wait()
        proxy.log.info("stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await proxy.stop()
