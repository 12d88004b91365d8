"""Assembling the proxy: listeners, sessions, the mirror, the comparer, the log; signals, reload
and graceful shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import ssl
from pathlib import Path
from typing import Any

from aiohttp import web

from shadowproxy import channel, oplog, signals, tlsfiles, websocket
from shadowproxy.admin import LiveReport, build_admin_app
from shadowproxy.capture import CaptureSink, worker_path
from shadowproxy.compare import Comparer
from shadowproxy.compare.model import Comparison
from shadowproxy.config import (
    Config,
    ConfigError,
    HostPort,
    TLSListener,
    load_config,
    parse_config_text,
    without_credentials,
)
from shadowproxy.exchange import Exchange
from shadowproxy.forward import PrimaryPath
from shadowproxy.guard import GuardedServer
from shadowproxy.metrics import Metrics
from shadowproxy.mirror import MirrorDispatcher
from shadowproxy.noise import NoiseFilter, gives_evidence
from shadowproxy.pool import Timing
from shadowproxy.record import LogWriter, QueryRedactor, build_record, outcome_of
from shadowproxy.redact import Redactor
from shadowproxy.report.live import LiveView
from shadowproxy.shares import DemandBoard
from shadowproxy.upstream import make_pool, make_session
from shadowproxy.watch import FileWatcher

LISTEN_BACKLOG = 1024
ORPHAN_CHECK_INTERVAL = 1.0
# Seconds a worker waits for its 'worker_listening' line to leave before saying it is ready;
# a standard error nobody reads must not hold up the start.
ANNOUNCE_TIMEOUT = 1.0


def listener_tls_context(listener: TLSListener) -> ssl.SSLContext:
    """The HTTPS listener's context; a pair that cannot be loaded raises an `OSError` naming
    the config key and the file at fault."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tlsfiles.load_pair(context, listener.cert_file, listener.key_file, "listen_tls")
    return context


def address_text(host: str, port: int) -> str:
    """``host:port`` as a URL takes it: ``[::1]:8080`` for IPv6."""
    return str(HostPort(host=host, port=port))


def bind(address: HostPort, key: str, *, reuse_port: bool = False) -> socket.socket:
    """A listening-ready socket; SO_REUSEPORT lets worker processes share one port.

    A failure names the config key and the address: "listen 0.0.0.0:8080: Address already
    in use" says what to change, where a bare errno does not.
    """
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address.host, address.port))
    except OSError as error:
        sock.close()
        raise OSError(f"{key} {address}: {error.strerror or error}") from None
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
        tls_socket: socket.socket | None = None,
        admin_socket: socket.socket | None = None,
        serve_admin: bool = True,
        worker: int | None = None,
        workers: int = 1,
        demand_board: DemandBoard | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self._proxy_socket = proxy_socket
        self._tls_socket = tls_socket
        self._tls_context: ssl.SSLContext | None = None
        self.tls_address: tuple[str, int] | None = None
        self._admin_socket = admin_socket
        self._serve_admin = serve_admin
        self.worker = worker
        self.workers = workers
        """Processes sharing the port; ``mirror.max_rps`` is shared among them."""
        self.demand_board = demand_board
        """Where the workers share ``mirror.max_rps`` by demand (see shares.py)."""
        self.metrics = Metrics()
        self.redactor = Redactor(config.log.redact)
        self.query_redactor = QueryRedactor(config.log.redact_query)
        self.live = LiveView()
        self.log = oplog.get(worker=worker) if worker is not None else oplog.get()
        self._runners: list[web.BaseRunner] = []
        self._watcher: FileWatcher | None = None
        # Worker processes are watched and signalled by their supervisor instead.
        if config_path is not None and config.reload.watch and worker is None:
            self._watcher = FileWatcher(config_path, config.reload.poll_interval, self.reload)
        self.proxy_address: tuple[str, int] | None = None
        self.admin_address: tuple[str, int] | None = None

    async def start(self) -> None:
        """Build the parts and open the listeners; when any step fails (a port in use, a
        capture file that cannot be opened), close what was already built, then raise."""
        async with contextlib.AsyncExitStack() as built:
            await self._start(built)
            built.pop_all()  # started: stop() closes everything, in its own order

    async def _start(self, built: contextlib.AsyncExitStack) -> None:
        config = self.config
        for name, backend in (("primary", config.primary), ("candidate", config.candidate)):
            if backend.tls.insecure and backend.url.startswith("https://"):
                self.log.warning(
                    "tls_verification_disabled",
                    backend=name,
                    url=without_credentials(backend.url),
                    detail="certificates are not checked: never use this in production",
                )
        # Metrics are published with each flush of the log (and each scrape): never behind it.
        self.writer = LogWriter(
            config.log,
            on_lost=self.metrics.log_lost.inc,
            oplog=self.log,
            before_flush=self.metrics.publish,
        )
        self.writer.start()
        built.push_async_callback(self.writer.close)
        opened = self.metrics.connections
        self.primary_pool = make_pool(
            config.primary,
            name="primary",
            timing=Timing.IDLE,
            on_connect=opened.labels("primary").inc,
        )
        self.candidate_pool = make_pool(
            config.candidate,
            name="candidate",
            timing=Timing.TOTAL,
            on_connect=opened.labels("candidate").inc,
        )
        self.secondary_pool = (
            make_pool(
                config.secondary,
                name="secondary",
                timing=Timing.TOTAL,
                on_connect=opened.labels("secondary").inc,
            )
            if config.secondary
            else None
        )
        for pool in (self.primary_pool, self.candidate_pool, self.secondary_pool):
            if pool is not None:
                built.push_async_callback(pool.close)
        # WebSocket upgrades are relayed by aiohttp's client; it opens no connection until one.
        self.websocket_session = make_session(
            config.primary,
            name="primary",
            stream_timeout=True,
            trace_configs=[websocket.refuse_redirects()],
        )
        built.push_async_callback(self.websocket_session.close)
        self.noise = NoiseFilter(config, self.worker, self.log)
        self.noise.start()
        built.push_async_callback(self.noise.close)
        self.comparer = Comparer(config.effective_diff())
        await self.comparer.start()
        built.push_async_callback(self.comparer.close)
        self.dispatcher = MirrorDispatcher(
            config,
            candidate_pool=self.candidate_pool,
            secondary_pool=self.secondary_pool,
            compare=self.comparer.compare,
            metrics=self.metrics,
            sinks=[self._record],
            workers=self.workers,
            board=self.demand_board,
        )
        self.capture = self._open_capture(config)
        if self.capture is not None:
            built.push_async_callback(self.capture.close)
        self.primary_path = PrimaryPath(
            config,
            pool=self.primary_pool,
            websocket_session=self.websocket_session,
            mirror=self.dispatcher,
            metrics=self.metrics,
            capture=self.capture,
        )

        self.proxy_server = GuardedServer(
            self.primary_path.handle,
            limits=config.limits,
            metrics=self.metrics,
            auto_decompress=False,
        )
        proxy_runner = web.ServerRunner(
            self.proxy_server, shutdown_timeout=config.shutdown_timeout, access_log=None
        )
        built.push_async_callback(self._cleanup_runners)
        await proxy_runner.setup()
        self._runners.append(proxy_runner)
        proxy_sock = self._proxy_socket or bind(config.listen, "listen")
        await web.SockSite(proxy_runner, proxy_sock, backlog=LISTEN_BACKLOG).start()
        self.proxy_address = proxy_sock.getsockname()[:2]
        if config.listen_tls is not None:
            self._tls_context = listener_tls_context(config.listen_tls)
            tls_sock = self._tls_socket or bind(config.listen_tls.address, "listen_tls")
            await web.SockSite(
                proxy_runner, tls_sock, ssl_context=self._tls_context, backlog=LISTEN_BACKLOG
            ).start()
            self.tls_address = tls_sock.getsockname()[:2]

        if self._serve_admin:
            await self._start_admin()
        if self._watcher is not None:
            self._watcher.start()
            built.push_async_callback(self._watcher.stop)

    def announce(self) -> None:
        """Say where the proxy listens: once it is wholly ready, signals handled included."""
        assert self.proxy_address is not None
        admin = self.admin_address
        self.log.info(
            "listening" if self.worker is None else "worker_listening",
            proxy=address_text(*self.proxy_address),
            admin=address_text(*admin) if admin else None,
            tls=address_text(*self.tls_address) if self.tls_address else None,
            primary=without_credentials(self.config.primary.url),
            candidate=without_credentials(self.config.candidate.url),
            config_digest=self.config.digest(),
            pid=os.getpid(),
        )
        if self.worker is None:  # with workers, the supervisor reads the file and says it
            warn_about(self.config, self.log)

    async def _cleanup_runners(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()

    def _open_capture(self, config: Config) -> CaptureSink | None:
        if config.capture is None:
            return None
        capture = CaptureSink(
            config.capture,
            config.log.redact,
            redact_query=config.log.redact_query,
            path=worker_path(config.capture.path, self.worker),
            on_result=lambda result, count: self.metrics.captured.labels(result).inc(count),
            oplog=self.log,
        )
        capture.start()
        return capture

    async def _start_admin(self) -> None:
        admin_app = build_admin_app(
            config=lambda: self.config,
            metrics=self.metrics.render,
            report=LiveReport(summary=self.live.summary, title=self.live.title),
        )
        admin_runner = web.AppRunner(admin_app, access_log=None, shutdown_timeout=1.0)
        await admin_runner.setup()
        self._runners.append(admin_runner)
        admin_sock = self._admin_socket or bind(self.config.admin, "admin")
        await web.SockSite(admin_runner, admin_sock).start()
        self.admin_address = admin_sock.getsockname()[:2]

    def _record(
        self,
        exchange: Exchange,
        comparison: Comparison | None,
        secondary_comparison: Comparison | None,
    ) -> None:
        comparison, noise = self.noise.apply(
            exchange.endpoint,
            comparison,
            secondary_comparison,
            secondary_answered=gives_evidence(exchange.primary, exchange.secondary),
        )
        record = build_record(
            exchange, comparison, noise=noise, redactor=self.redactor, query=self.query_redactor
        )
        self.writer.write(record)
        if self._serve_admin:
            self.live.add(record)
        outcome = outcome_of(exchange.candidate, comparison)
        endpoint = self.metrics.endpoint_label(exchange.endpoint)
        self.metrics.labelled(self.metrics.comparisons, outcome.value, endpoint).inc()

    def hang_up(self) -> None:
        """SIGHUP: reopen the log, then reload the config file.

        The log is reopened first, whatever becomes of the config: logrotate's signal must
        not depend on the file being valid, or records would go on into the rotated file.
        """
        self.reopen_log()
        self.reload()

    def reopen_log(self) -> None:
        if self.writer.reopen():  # a failure is said where it happens: log_open_failed
            self.log.info("log_reopened", path=self.config.log.path)

    def reload(self) -> bool:
        """Validate the config file again and swap it in; the old one stays on any error."""
        if self.config_path is None:
            return False
        if self._watcher is not None:
            self._watcher.mark_current()
        try:
            new = load_config(self.config_path)
        except ConfigError as error:
            self._reload_failed(error)
            return False
        return self.apply(new)

    def apply_text(self, text: str, catch_up: bool = False) -> bool:
        """Swap in the config the supervisor sent (validated there, parsed again here).
        ``catch_up``: the text in force, sent to a worker started again after reloads."""
        try:
            new = parse_config_text(text, str(self.config_path or "config"))
        except ConfigError as error:
            self._reload_failed(error)
            return False
        return self.apply(new, catch_up=catch_up)

    def _reload_failed(self, error: Exception, event: str = "config_reload_failed") -> bool:
        if self.worker is None:  # with workers the supervisor counts (metrics.reloads_counter)
            self.metrics.reloads.labels("invalid").inc()
        self.log.error(event, path=str(self.config_path), error=str(error))
        return False

    def apply(self, new: Config, *, catch_up: bool = False) -> bool:
        """Swap in ``new``, but for the keys that need a restart; False, with the old config
        still in force, when its TLS pair or its comparison rules cannot be loaded.

        ``catch_up``: a worker started again takes the config its siblings run; that is no
        reload, so it is neither counted nor written to the discrepancy log.
        """
        running = self.config.reloaded(new)
        tls = running.listen_tls
        if tls is not None and self._tls_context is not None:
            try:
                listener_tls_context(tls)  # a bad pair must not replace a good one
                self._tls_context.load_cert_chain(tls.cert_file, tls.key_file)
            except (OSError, ssl.SSLError) as error:
                return self._reload_failed(error, "tls_reload_failed")
        try:
            # First what can fail, so that a refused config changes nothing.
            self.comparer.update(running.effective_diff())
            redactor, query_redactor = (
                Redactor(running.log.redact),
                QueryRedactor(running.log.redact_query),
            )
        except ValueError as error:
            return self._reload_failed(error)
        unchanged = self.config.restart_only_changes(new)
        if unchanged and not catch_up:
            self.log.warning(
                "config_reload_partial",
                detail="these keys take effect only after a restart",
                keys=unchanged,
            )
        self.config = running
        self.redactor, self.query_redactor = redactor, query_redactor
        self.primary_path.configure(running)
        self.proxy_server.configure(running.limits)
        self.dispatcher.configure(running)
        self.noise.configure(running)
        self.writer.configure(running.log)
        if self.capture is not None:
            # `capture` itself needs a restart, but it redacts as the log does.
            self.capture.configure_redaction(running.log.redact, running.log.redact_query)
        digest = running.digest()
        if catch_up:
            self.log.info("config_caught_up", digest=digest)
            return True
        if self.worker is None:
            self.metrics.reloads.labels("ok").inc()
            warn_about(running, self.log)
        self.writer.event(
            "config_reloaded", digest=digest, path=str(self.config_path), worker=self.worker
        )
        self.log.info("config_reloaded", digest=digest)
        return True

    async def stop(self) -> None:
        """Stop accepting, finish client requests, give mirrors a grace period, flush the log."""
        if self._watcher is not None:
            await self._watcher.stop()
        proxy_runner, *others = self._runners
        await proxy_runner.cleanup()
        cancelled = await self.dispatcher.drain(self.config.mirror.shutdown_grace)
        for runner in others:
            await runner.cleanup()
        await self.comparer.close()
        await self.primary_pool.close()
        await self.candidate_pool.close()
        if self.secondary_pool is not None:
            await self.secondary_pool.close()
        await self.websocket_session.close()
        await self.noise.close()
        if self.capture is not None:
            await self.capture.close()
        await self.writer.close()  # first: its last batch may still be lost
        self.log.info("stopped", mirrors_cancelled=cancelled, log_records_lost=self.writer.lost)


def warn_about(config: Config, log: Any) -> None:
    """The config's warnings (valid, but probably not meant) in the operational log."""
    for warning in config.warnings():
        log.warning("config_warning", warning=warning)


async def serve(
    config: Config,
    config_path: Path | None = None,
    *,
    worker: int | None = None,
    workers: int = 1,
    listen_port: int | None = None,
    tls_port: int | None = None,
    ready_fd: int | None = None,
    config_channel: int | None = None,
    demand_file: Path | None = None,
) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reopens the log and reloads the config.

    As a worker of a supervisor (``worker`` set), bind the supervisor's port with
    SO_REUSEPORT, serve no admin listener, and say on ``ready_fd`` when listening. With a
    ``config_channel`` the config comes from the supervisor only, and SIGHUP just reopens
    the log.
    """
    proxy_socket = None
    if listen_port is not None:
        address = config.listen.model_copy(update={"port": listen_port})
        proxy_socket = bind(address, "listen", reuse_port=True)
    tls_socket = None
    if tls_port is not None and config.listen_tls is not None:
        address = config.listen_tls.address.model_copy(update={"port": tls_port})
        tls_socket = bind(address, "listen_tls", reuse_port=True)
    board = None
    if demand_file is not None and worker is not None:
        board = DemandBoard(demand_file, workers, worker)
    proxy = Proxy(
        config,
        config_path=config_path,
        proxy_socket=proxy_socket,
        tls_socket=tls_socket,
        serve_admin=worker is None,
        worker=worker,
        workers=workers,
        demand_board=board,
    )
    # Handlers are in place before anyone can learn the address: a stop asked for during
    # start-up drains once started, and a reload waits until the proxy can do it (SIGHUP is
    # held since cmd_run, before any thread started; released below).
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(
        signal.SIGHUP, proxy.hang_up if config_channel is None else proxy.reopen_log
    )
    await proxy.start()
    from_supervisor = None
    if config_channel is not None:
        from_supervisor = await channel.receive(config_channel, proxy.apply_text)
    # What start-up built (modules, the config, compiled rules, pools) lives as long as the
    # process: out of the collector's full passes, which otherwise walk it again and again.
    gc.collect()
    gc.freeze()
    signals.release(signal.SIGHUP)
    proxy.announce()
    if ready_fd is not None:
        # After the announcement is out: the supervisor's comes after every worker's.
        oplog.wait_written(ANNOUNCE_TIMEOUT)
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    orphan_watch = None
    if worker is not None:
        orphan_watch = loop.create_task(_stop_when_orphaned(stop))
    try:
        await stop.wait()
        proxy.log.info("stopping")
    finally:
        if orphan_watch is not None:
            orphan_watch.cancel()
        if from_supervisor is not None:
            from_supervisor.close()  # no reload once draining
        # Signals stay handled until the end: a second SIGTERM must not cut the drain short.
        await proxy.stop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    """A worker whose supervisor died (even by SIGKILL) must not serve on alone."""
    parent = os.getppid()
    # The kernel sends no event for this without prctl; polling is cheap.
    while os.getppid() == parent:  # noqa: ASYNC110
        await asyncio.sleep(ORPHAN_CHECK_INTERVAL)
    stop.set()
