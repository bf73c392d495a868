"""The admin endpoint on 127.0.0.1: readiness for the supervisor, counters for humans and tests.

Not the hot path, so it uses h11 (strict, sans-I/O) and answers one request per connection
(``Connection: close``), which keeps the state handling trivial. Routing is a function from
(method, path, state) to (status, content type, body), tested without sockets; the Envoy-style
operations (/stats/prometheus, /config_dump, /clusters, /certs, /logging, POST /drain) are
callbacks the server fills in (``AdminOps``), absent ones answer 404. The same protocol serves
the metrics listener on the pod address with ``metrics_route`` (Prometheus text only).

h11 is imported by the protocol's methods, so at the first admin connection rather than at
start: a pod being created waits for the sidecar's imports, and nothing asks the admin endpoint
anything before the sidecar is ready (the supervisor learns that from the ready pipe). The
sidecar's main checks at start that h11 is installed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, cast

from meshns.dataplane.stats import Stats

if TYPE_CHECKING:
    import h11

log = logging.getLogger("meshns.dataplane.admin")

# Enough for any request line and headers a human or the supervisor sends; more is refused by h11.
MAX_REQUEST_BYTES: Final = 16 * 1024
# A client that connects and says nothing must not hold a connection forever.
REQUEST_TIMEOUT_S: Final = 10.0


PROC_STATUS: Final = "/proc/self/status"
PROC_FD: Final = "/proc/self/fd"


def parse_proc_status(text: str) -> dict[str, int]:
    """The figures of /proc/<pid>/status a leak check needs: resident and peak resident memory
    (bytes; the kernel gives kB) and threads. A field the kernel did not print is left out."""
    wanted = {"VmRSS": ("rss_bytes", 1024), "VmHWM": ("rss_peak_bytes", 1024), "Threads": ("threads", 1)}
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep or key not in wanted:
            continue
        name, scale = wanted[key]
        fields = rest.split()
        if fields and fields[0].isdigit():
            out[name] = int(fields[0]) * scale
    return out


def running_tasks() -> int | None:
    """asyncio tasks of the running loop; None outside one (a caller without a loop)."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return None


def process_section(active: int, status_path: str = PROC_STATUS, fd_dir: str = PROC_FD) -> dict[str, object]:
    """What shows a leak in a long-running sidecar: descriptors, memory, tasks, threads, next to
    the connections that legitimately hold them. Read per /stats request only, never on the data
    path: one small read and a listing of the fd table, which costs about 1 us per descriptor
    (20 ms at 19,000: a stall a human's or a test's request can afford, a hot path could not).
    The listing's own descriptor is counted, as prometheus-client's process_open_fds does."""
    doc: dict[str, object] = {"connections_active": active,
                              "max_fds": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}
    try:
        doc["open_fds"] = len(os.listdir(fd_dir))
    except OSError:
        doc["open_fds"] = None
    try:
        with open(status_path, encoding="ascii", errors="replace") as f:
            doc.update(parse_proc_status(f.read()))
    except OSError:
        pass
    doc["asyncio_tasks"] = running_tasks()
    return doc


@dataclass
class AdminState:
    """What the admin endpoint reports; the server flips ``ready``/``draining``."""

    pod: str
    stats: Stats
    ready: bool = False
    draining: bool = False
    started_monotonic: float = 0.0
    # More top-level sections of /stats (snapshot version, per-service counters), computed per scrape.
    extras: list[Callable[[], dict[str, object]]] = field(default_factory=list)
    ops: AdminOps | None = None

    def __post_init__(self) -> None:
        if not self.started_monotonic:
            self.started_monotonic = time.monotonic()

    def stats_document(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "pod": self.pod,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started_monotonic, 3),
            "ready": self.ready and not self.draining,
            "draining": self.draining,
        }
        doc.update(self.stats.as_dict())
        doc["process"] = process_section(self.stats.active)
        for extra in self.extras:
            doc.update(extra())
        return doc


Reply = tuple[int, str, bytes]
Query = dict[str, str]


@dataclass
class AdminOps:
    """What the sidecar exposes beyond /ready and /stats (see ``admin_ops``)."""

    prometheus: Callable[[], bytes]
    config_dump: Callable[[], dict[str, object]]
    clusters: Callable[[], dict[str, object]]
    logging_get: Callable[[], dict[str, object]]
    logging_set: Callable[[Query], Reply]
    drain: Callable[[], None]
    certs: Callable[[], dict[str, object]] = lambda: CERTS_NONE


def _json(doc: object) -> Reply:
    return 200, "application/json", json.dumps(doc, sort_keys=True, indent=1).encode() + b"\n"


PROMETHEUS_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
CERTS_NONE: Final[dict[str, object]] = {"certificates": [], "note": "no identity: this sidecar runs without mTLS"}


def _ops_route(method: bytes, target: bytes, query: Query, ops: AdminOps, state: AdminState) -> Reply | None:
    get = method in (b"GET", b"HEAD")
    if target in (b"/stats/prometheus", b"/metrics"):
        return (200, PROMETHEUS_TYPE, ops.prometheus()) if get else None
    if target == b"/config_dump":
        return _json(ops.config_dump()) if get else None
    if target == b"/clusters":
        return _json(ops.clusters()) if get else None
    if target == b"/certs":
        return _json(ops.certs()) if get else None
    if target == b"/logging":
        return _json(ops.logging_get()) if get else ops.logging_set(query) if method == b"POST" else None
    if target in (b"/drain", b"/quitquitquit"):
        if method != b"POST":
            return None
        if not state.draining:
            ops.drain()
        return 200, "text/plain", b"draining\n"
    return 404, "text/plain", b"not found\n"


def _query(raw: bytes) -> Query:
    return {k: v[-1] for k, v in urllib.parse.parse_qs(raw.decode("latin-1")).items()}


def metrics_route(method: bytes, path: bytes, state: AdminState) -> Reply:
    """The metrics listener on the pod address: Prometheus text and nothing else."""
    target = path.split(b"?", 1)[0]
    if target not in (b"/stats/prometheus", b"/metrics") or state.ops is None:
        return 404, "text/plain", b"not found\n"
    if method not in (b"GET", b"HEAD"):
        return 405, "text/plain", b"method not allowed\n"
    return 200, PROMETHEUS_TYPE, state.ops.prometheus()


def route(method: bytes, path: bytes, state: AdminState) -> Reply:
    """Request routing of the admin endpoint."""
    target, _, raw_query = path.partition(b"?")
    if target not in (b"/ready", b"/stats") and state.ops is not None:
        reply = _ops_route(method, target, _query(raw_query), state.ops, state)
        return reply if reply is not None else (405, "text/plain", b"method not allowed\n")
    if method not in (b"GET", b"HEAD"):
        if target in (b"/ready", b"/stats"):
            return 405, "text/plain", b"method not allowed\n"
        return 404, "text/plain", b"not found\n"
    if target == b"/ready":
        if state.ready and not state.draining:
            return 200, "text/plain", b"ready\n"
        return 503, "text/plain", b"draining\n" if state.draining else b"not ready\n"
    if target == b"/stats":
        body = json.dumps(state.stats_document(), sort_keys=True).encode() + b"\n"
        return 200, "application/json", body
    return 404, "text/plain", b"not found\n"


Router = Callable[[bytes, bytes, AdminState], Reply]


class AdminProtocol(asyncio.Protocol):
    def __init__(self, state: AdminState, router: Router = route) -> None:
        import h11  # noqa: PLC0415 - at the first admin connection (module docstring)

        self.state = state
        self.router = router
        self.conn: h11.Connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.timer = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT_S, self.transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._advance()

    def eof_received(self) -> bool | None:
        self.conn.receive_data(b"")
        self._advance()
        return None

    def _advance(self) -> None:
        import h11  # noqa: PLC0415 - loaded by __init__ already: a lookup

        try:
            event = self.conn.next_event()
        except h11.RemoteProtocolError as exc:
            self._reply((exc.error_status_hint, "text/plain", b"bad request\n"), head=False)
            return
        if isinstance(event, h11.Request):
            head = event.method == b"HEAD"
            self._reply(self.router(event.method, event.target, self.state), head=head)
        elif isinstance(event, h11.ConnectionClosed):
            self._close()
        # h11.NEED_DATA: wait for more bytes. The request body (if any) is never read: we reply and
        # close, which is allowed for a server and keeps this endpoint stateless.

    def _reply(self, reply: Reply, *, head: bool) -> None:
        import h11  # noqa: PLC0415 - loaded by __init__ already: a lookup

        status, ctype, body = reply
        headers = [
            ("content-type", ctype),
            ("content-length", str(len(body))),
            ("connection", "close"),
        ]
        assert self.transport is not None
        try:
            out = self.conn.send(h11.Response(status_code=status, headers=headers))
            if not head:
                out = (out or b"") + (self.conn.send(h11.Data(data=body)) or b"")
            out = (out or b"") + (self.conn.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError:
            # e.g. an error reply when h11 has already given up on the connection: just close.
            log.debug("admin: could not send reply", exc_info=True)
            out = b""
        self.transport.write(out)
        self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def admin_factory(state: AdminState, router: Router = route) -> Callable[[], asyncio.Protocol]:
    return lambda: AdminProtocol(state, router)
