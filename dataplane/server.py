"""The sidecar process: listeners, admin endpoint, signals and drain.

``Sidecar`` is constructible in-process for tests: pass ports 0 in the config (the bound ports are
then in ``outbound_addr``/``inbound_addr``/``admin_addr``/``metrics_addr``) and a ``FixedResolver``
instead of the SO_ORIGINAL_DST one. ``main`` is the process entry point used by
``python -m meshns.dataplane``. SIGTERM, SIGINT and the admin endpoint's POST /drain all end the
same way: ``serve`` sees the stop event, ``drain`` runs, and the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import importlib.util
import logging
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Final

from meshns import prctl
from meshns.dataplane import accesslog, admin_ops, identity
from meshns.dataplane.accept import InboundAcceptor
from meshns.dataplane.addrs import ListenAddr, listen_addr_from
from meshns.dataplane.admin import AdminOps, AdminState, admin_factory, metrics_route
from meshns.dataplane.config import SidecarConfig, load_config
from meshns.dataplane.connect import Connector
from meshns.dataplane.decide import Direction
from meshns.dataplane.http1.context import HttpContext
from meshns.dataplane.http1.downstream import take_over
from meshns.dataplane.http1.inbound import take_over_inbound
from meshns.dataplane.http1.parser import parser_kit
from meshns.dataplane.mesh_connect import MeshConnector
from meshns.dataplane.metrics import Health, Metrics
from meshns.dataplane.observe import Observer
from meshns.dataplane.origdst import OriginalDstResolver, SockoptResolver
from meshns.dataplane.relay import RelayContext
from meshns.dataplane.snapshots import SnapshotStore
from meshns.dataplane.stats import Stats
from meshns.errors import MeshnsError, SystemFailure
from meshns.trace import mark

log = logging.getLogger("meshns.dataplane")

# Connections the kernel may queue before we accept: a burst of pod startup traffic must not see
# SYNs dropped while the loop is busy.
LISTEN_BACKLOG: Final = 1024
# How often drain looks at the active count. Polling keeps the relay free of drain bookkeeping.
DRAIN_POLL_S: Final = 0.05
# What the sidecar writes on its ready pipe (config.ready_fd) once it accepts on every listener.
READY_LINE: Final = b"ready\n"
# Packages the sidecar imports only when first used, not at start (a pod being created waits for
# the start-up imports): prometheus_client at the first scrape (metrics.py), h11 at the first
# admin connection (admin.py). main checks they are installed, so a missing one stops the sidecar
# at start, and with it the pod's create, rather than failing a scrape later.
LATER_IMPORTS: Final = ("prometheus_client", "h11")


class Sidecar:
    def __init__(
        self,
        config: SidecarConfig,
        *,
        resolver: OriginalDstResolver | None = None,
        connector: Connector | None = None,
        rng: random.Random | None = None,
        tls: identity.MeshTls | None = None,
    ) -> None:
        self.config = config
        self.stats = Stats()
        self.admin_state = AdminState(config.pod, self.stats)
        dir_fd = None if config.snapshot_dir_fd < 0 else config.snapshot_dir_fd
        self.store = SnapshotStore(config.pod, dir_fd, config.snapshot_file)
        # The identity (from the supervisor's pipe, or given by a test); without one, no mTLS.
        self.tls = tls or identity.MeshTls()
        if connector is None:
            connector = MeshConnector(self.store, self.tls, self.stats, config.tls_handshake_timeout_s)
        mark("sc:sidecar-init")
        self.metrics = Metrics(self._health, tasks=True)
        self.obs = Observer(config, self.store, self.metrics)
        self.ctx = RelayContext(config, self.stats, resolver or SockoptResolver(), connector, self.obs)
        # One random source per sidecar (balancing, weights, faults, jitter); tests pass a seeded one.
        self.http = HttpContext(config, self.stats, self.store, connector, parser_kit(config.http_parser),
                                rng or random.Random(), self.obs)
        self.ctx.service_hook = lambda transport, dst: take_over(self.http, transport, dst.as_tuple())
        self.ctx.inbound_hook = lambda transport, fwd, peer: take_over_inbound(self.http, transport, fwd, peer)
        self.admin_state.extras.append(self._stats_extras)
        self.admin_state.ops = AdminOps(
            prometheus=self.metrics.exposition,
            config_dump=lambda: admin_ops.config_dump(self.store),
            clusters=lambda: admin_ops.clusters(self.http, self.store, asyncio.get_running_loop().time()),
            logging_get=admin_ops.logging_levels,
            logging_set=admin_ops.set_logging,
            drain=self.request_stop,
            certs=self._certs,
        )
        self._watch_task: asyncio.Task[None] | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._relay_servers: list[asyncio.Server] = []
        self._acceptor: InboundAcceptor | None = None
        self._identity_pipe: asyncio.BaseTransport | None = None
        self._admin_server: asyncio.Server | None = None
        self._metrics_server: asyncio.Server | None = None
        self._stop: asyncio.Event | None = None
        self.outbound_addr: ListenAddr | None = None
        self.inbound_addr: ListenAddr | None = None
        self.admin_addr: ListenAddr | None = None
        self.metrics_addr: ListenAddr | None = None

    @property
    def ready(self) -> bool:
        return self.admin_state.ready and not self.admin_state.draining

    def buffered_bytes(self) -> int:
        """Bytes held in user space across all relayed connections (debug accessor for tests)."""
        return self.ctx.buffered_bytes() + self.http.buffered_bytes()

    def _health(self) -> Health:
        services = {name: (p.state.retries, p.state.ejections, p.state.overflows, p.state.budget_exhausted)
                    for name, p in self.http.pools.items()}
        return Health(self.store.version, self.store.reloads, self.stats.active, services)

    def request_stop(self) -> None:
        """POST /drain: the same path as SIGTERM (readiness false at once, then ``drain``)."""
        self.admin_state.draining = True
        if self._stop is not None:
            self._stop.set()

    def _arm_access_log_flush(self) -> None:
        """A line started a new access-log batch: write it out FLUSH_S from now at the latest."""
        if self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(accesslog.FLUSH_S, self._flush_access_log)

    def _flush_access_log(self) -> None:
        self._flush_timer = None
        accesslog.flush()

    def _certs(self) -> dict[str, object]:
        """Envoy's /certs, reduced: this pod's identity and certificate dates (never the key)."""
        w = self.tls.workload
        if w is None:
            return {"certificates": [], "note": "no identity: this sidecar runs without mTLS"}
        stamp = "%Y-%m-%dT%H:%M:%SZ"
        return {"certificates": [{
            "identity": w.identity, "serial": w.serial,
            "valid_from": time.strftime(stamp, time.gmtime(w.not_before)),
            "expires": time.strftime(stamp, time.gmtime(w.not_after)),
            "roots": w.bundle_pem.count("BEGIN CERTIFICATE"),
        }]}

    def _stats_extras(self) -> dict[str, object]:
        return {
            "snapshot_version": self.store.version,
            "snapshot_reloads": self.store.reloads,
            "snapshot_reload_errors": self.store.reload_errors,
            "http_parser": self.http.kit.name,
            "tls": self.tls.doc(),
            "services": self.http.services_doc(),
        }

    async def _bind(
        self, factory: Callable[[], asyncio.Protocol], host: str, port: int, what: str
    ) -> tuple[asyncio.Server, ListenAddr]:
        loop = asyncio.get_running_loop()
        try:
            # Listen now but accept nothing until every listener is bound and the context knows the
            # real ports (with port 0 they are only known after bind; loop detection needs them).
            server = await loop.create_server(
                factory, host, port, reuse_address=True, backlog=LISTEN_BACKLOG, start_serving=False,
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise SystemFailure(f"sidecar: cannot bind {what} listener {host}:{port}: {reason}") from exc
        return server, listen_addr_from(server.sockets[0].getsockname())

    async def start(self) -> None:
        """Bind all listeners, then start accepting and report ready."""
        cfg = self.config
        pending = b""
        if cfg.identity_fd >= 0:
            # Fail closed: no listener exists before this pod can prove who it is.
            pending = identity.read_first(self.tls, cfg.identity_fd, cfg.tls_handshake_timeout_s)
            mark("sc:identity")
        try:
            out_srv, self.outbound_addr = await self._bind(
                self.ctx.factory(Direction.OUTBOUND), cfg.bind_ip, cfg.outbound_port, "outbound")
            self._relay_servers.append(out_srv)
            if self.tls.server_ctx is not None:
                self._acceptor, self.inbound_addr = self._bind_acceptor()
            else:
                in_srv, self.inbound_addr = await self._bind(
                    self.ctx.factory(Direction.INBOUND), cfg.bind_ip, cfg.inbound_port, "inbound")
                self._relay_servers.append(in_srv)
            # Localhost only: /stats reveals traffic volumes and must not be reachable from the pod
            # network.
            self._admin_server, self.admin_addr = await self._bind(
                admin_factory(self.admin_state), "127.0.0.1", cfg.admin_port, "admin")
            if cfg.metrics_port >= 0:
                # On the pod address, like Envoy's 15090: Prometheus scrapes from outside the pod,
                # and interception leaves this port alone. Only the metrics text is served here.
                self._metrics_server, self.metrics_addr = await self._bind(
                    admin_factory(self.admin_state, metrics_route), cfg.bind_ip, cfg.metrics_port, "metrics")
        except BaseException:
            self._close_listeners()
            self._close_ops_listeners()
            raise
        self.ctx.config = dataclasses.replace(
            cfg, outbound_port=self.outbound_addr.port, inbound_port=self.inbound_addr.port)
        self.store.check()  # the snapshot on disk, if any, before the first connection
        self._watch_task = asyncio.ensure_future(self.store.watch())
        if cfg.identity_fd >= 0:
            self._identity_pipe = await identity.attach(self.tls, cfg.identity_fd, pending)
        accesslog.on_batch(self._arm_access_log_flush)
        self._stop = asyncio.Event()
        # Everything alive now (modules, config, the first snapshot, the TLS contexts) lives as long
        # as the process: out of the cyclic collector's sight, a full collection under load walks
        # only what serving made (measured: 12-18 ms pauses of every request in flight before).
        # Nothing that can form a garbage cycle exists yet (no connection), and frozen objects are
        # still freed by reference counting.
        gc.freeze()
        for srv in [*self._relay_servers, self._admin_server, self._metrics_server]:
            if srv is not None:
                await srv.start_serving()
        if self._acceptor is not None:
            self._acceptor.start()
        self.admin_state.ready = True
        mark("sc:ready")
        _tell_ready(cfg.ready_fd)
        log.info("sidecar ready pod=%s pid=%d outbound=%s inbound=%s admin=%s metrics=%s", cfg.pod,
                 os.getpid(), self.outbound_addr, self.inbound_addr, self.admin_addr, self.metrics_addr)

    def _bind_acceptor(self) -> tuple[InboundAcceptor, ListenAddr]:
        cfg = self.config
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((cfg.bind_ip, cfg.inbound_port))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            reason = exc.strerror or str(exc)
            raise SystemFailure(f"sidecar: cannot bind inbound listener {cfg.bind_ip}:{cfg.inbound_port}: "
                                f"{reason}") from exc
        acceptor = InboundAcceptor(
            sock, self.ctx.inbound, self.ctx.resolver, self.tls, self.store, self.stats,
            probe_port=cfg.probe_port, peek_timeout_s=cfg.inbound_peek_timeout_s,
            handshake_timeout_s=cfg.tls_handshake_timeout_s)
        return acceptor, listen_addr_from(sock.getsockname())

    def _close_listeners(self) -> None:
        for srv in self._relay_servers:
            srv.close()
        self._relay_servers.clear()
        if self._acceptor is not None:
            self._acceptor.close()
            self._acceptor = None

    def _close_ops_listeners(self) -> None:
        for srv in (self._admin_server, self._metrics_server):
            if srv is not None:
                srv.close()
        self._admin_server = self._metrics_server = None

    async def drain(self) -> None:
        """Stop accepting, let active connections finish for up to drain_timeout_s, then cut them."""
        loop = asyncio.get_running_loop()
        self.admin_state.draining = True
        self._close_listeners()  # closes listening sockets only; accepted connections live on
        self.http.start_drain()  # idle keep-alive HTTP connections close now, busy ones after their response
        deadline = loop.time() + self.config.drain_timeout_s
        log.info("draining: %d active connections, up to %ss", self.stats.active, self.config.drain_timeout_s)
        while self.stats.active > 0 and loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        if self.stats.active > 0:
            log.warning("drain deadline passed, aborting %d connections", self.stats.active)
            self.ctx.abort_all()
            self.http.abort_all()
            await asyncio.sleep(0)  # let connection_lost callbacks run before the loop stops
        self._close_ops_listeners()
        if self._watch_task is not None:
            self._watch_task.cancel()
            self._watch_task = None
        accesslog.on_batch(None)
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._identity_pipe is not None:
            self._identity_pipe.close()
            self._identity_pipe = None
        accesslog.flush()

    async def serve(self) -> int:
        """After ``start``: wait for a stop request (signal or POST /drain), drain, return 0."""
        assert self._stop is not None, "start() first"
        await self._stop.wait()
        log.info("stop requested, draining")
        await self.drain()
        log.info("sidecar stopped pod=%s", self.config.pod)
        return 0

    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT or POST /drain, drain, return the exit code (0)."""
        loop = asyncio.get_running_loop()
        await self.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        return await self.serve()


def _tell_ready(fd: int) -> None:
    """One line on the supervisor's ready pipe (config.ready_fd), then close it. A supervisor
    that went away is no reason to stop serving: it only waits for this to start probing."""
    if fd < 0:
        return
    try:
        os.write(fd, READY_LINE)
    except OSError as exc:
        log.warning("ready pipe: %s", exc)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def _not_dumpable() -> None:
    """Every sidecar runs as uid 1337; without this, one pod's sidecar could read another's key
    from /proc/<pid>/mem or /proc/<pid>/fd (see meshns.prctl)."""
    try:
        prctl.not_dumpable()
    except OSError as exc:
        log.warning("%s: errno %d", exc.strerror, exc.errno)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    accesslog.install_handler()


def missing_packages(names: Sequence[str]) -> list[str]:
    """Those of ``names`` that cannot be imported (found without importing them)."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m meshns.dataplane --config FILE``; returns the process exit code."""
    import uvloop  # noqa: PLC0415 - only the process entry point needs the event loop policy

    missing = missing_packages(LATER_IMPORTS)
    if missing:
        err = SystemFailure(f"python package(s) not installed: {', '.join(missing)} (the sidecar's metrics and "
                            "admin endpoints need them)")
        print(f"meshns sidecar: {err}", file=sys.stderr)
        return err.exit_code

    parser = argparse.ArgumentParser(prog="python -m meshns.dataplane", description="meshns sidecar")
    parser.add_argument("--config", required=True, help="sidecar config JSON file")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and usage errors; report, don't raise
        return exc.code if isinstance(exc.code, int) else 2
    try:
        config = load_config(args.config)
    except MeshnsError as exc:
        print(f"meshns sidecar: {exc}", file=sys.stderr)
        return exc.exit_code
    mark("sc:config-loaded")
    setup_logging(config.log_level)
    if config.identity_fd >= 0:
        _not_dumpable()
    try:
        return uvloop.run(Sidecar(config).run())
    except MeshnsError as exc:
        log.error("%s", exc)
        return exc.exit_code
