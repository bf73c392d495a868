"""HTTP/2 peers for component tests: backends on 127.0.0.2-4 and a client, both raw h2 (so a test
controls windows, resets and GOAWAYs frame by frame), plus the in-process sidecar from httpkit."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

import h2.config
import h2.connection
import h2.events
import h2.settings
from httpkit import IPS, on_one_port

Headers = list[tuple[bytes, bytes]]


@dataclass
class Request:
    stream_id: int
    headers: dict[bytes, bytes]
    body: bytearray = field(default_factory=bytearray)


Handler = Callable[["H2Backend", "BackendConn", Request], Awaitable[None]]


class BackendConn(asyncio.Protocol):
    def __init__(self, backend: H2Backend) -> None:
        self.backend = backend
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.requests: dict[int, Request] = {}
        self.window_open = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass
        self.backend.connections += 1
        self.h2.initiate_connection()
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        for ev in self.h2.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                self.requests[ev.stream_id] = Request(ev.stream_id, dict(ev.headers))
            elif isinstance(ev, h2.events.DataReceived):
                self.requests[ev.stream_id].body += ev.data
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                req = self.requests[ev.stream_id]
                self.backend.requests += 1
                task = asyncio.ensure_future(self.backend.handler(self.backend, self, req))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            elif isinstance(ev, h2.events.WindowUpdated):
                self.window_open.set()
        self.flush()

    async def send_body(self, sid: int, data: bytes, end: bool = True, trailers: Headers | None = None) -> None:
        view = memoryview(data)
        while view:
            room = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if room <= 0:
                self.window_open.clear()
                await self.window_open.wait()
                continue
            self.h2.send_data(sid, view[:room].tobytes())
            view = view[room:]
            self.flush()
        if trailers is not None:
            self.h2.send_headers(sid, trailers, end_stream=True)
        elif end:
            self.h2.end_stream(sid)
        self.flush()


@dataclass
class H2Backend:
    ip: str
    handler: Handler
    connections: int = 0
    requests: int = 0


async def answer_name(be: H2Backend, conn: BackendConn, req: Request) -> None:
    body = be.ip.encode()
    conn.h2.send_headers(req.stream_id, [(b":status", b"200"), (b"x-backend", body)])
    await conn.send_body(req.stream_id, body)


def send_illegal_response(conn: BackendConn, sid: int) -> None:
    """Answer with a connection-specific field, illegal in HTTP/2: h2 on the other side refuses it."""
    conn.h2.config.validate_outbound_headers = False
    conn.h2.config.normalize_outbound_headers = False  # (normalizing would drop the field)
    conn.h2.send_headers(sid, [(b":status", b"200"), (b"connection", b"close")], end_stream=True)
    conn.flush()


@contextlib.asynccontextmanager
async def h2_backends(handler: Handler = answer_name, n: int = 3) -> AsyncIterator[tuple[int, list[H2Backend]]]:
    loop = asyncio.get_running_loop()
    bes = [H2Backend(ip, handler) for ip in IPS[:n]]
    starts = [functools.partial(loop.create_server, functools.partial(BackendConn, be), be.ip) for be in bes]
    async with on_one_port(starts) as port:
        yield port, bes


@dataclass
class Response:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    trailers: dict[bytes, bytes] = field(default_factory=dict)
    reset: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class H2Client(asyncio.Protocol):
    """``auto_ack=False`` on a stream: its DATA is never acknowledged (a reader that stopped)."""

    def __init__(self) -> None:
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.responses: dict[int, Response] = {}
        self.no_ack: set[int] = set()
        self.acked: dict[int, int] = {}
        self.goaway: int | None = None
        self.lost = asyncio.Event()

    @classmethod
    async def open(cls, host: str, port: int) -> H2Client:
        _, proto = await asyncio.get_running_loop().create_connection(cls, host, port)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass
        self.h2.initiate_connection()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()
        for r in self.responses.values():
            r.done.set()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        for ev in self.h2.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                self.responses[ev.stream_id].headers = dict(ev.headers)
            elif isinstance(ev, h2.events.TrailersReceived):
                self.responses[ev.stream_id].trailers = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                self.responses[ev.stream_id].body += ev.data
                if ev.stream_id not in self.no_ack:
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif ev.flow_controlled_length:
                    # The socket is read (the connection window comes back); the stream's reader
                    # is what stopped, so only its stream window stays shut.
                    self.h2.increment_flow_control_window(ev.flow_controlled_length)
            elif isinstance(ev, h2.events.StreamEnded):
                self.responses[ev.stream_id].done.set()
            elif isinstance(ev, h2.events.StreamReset):
                r = self.responses[ev.stream_id]
                r.reset = ev.error_code
                r.done.set()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev.error_code
        self.flush()

    def request(self, path: str = "/", headers: Headers | None = None, body: bytes = b"",
                ack: bool = True) -> tuple[int, Response]:
        sid = self.h2.get_next_available_stream_id()
        head = [(b":method", b"POST" if body else b"GET"), (b":path", path.encode()), (b":scheme", b"http"),
                (b":authority", b"reviews"), *(headers or [])]
        self.responses[sid] = Response()
        if not ack:
            self.no_ack.add(sid)
        self.h2.send_headers(sid, head, end_stream=not body)
        if body:
            self.h2.send_data(sid, body, end_stream=True)
        self.flush()
        return sid, self.responses[sid]

    def ack_all(self, sid: int) -> None:
        """The stalled reader catches up: the stream's window opens for everything it got."""
        self.no_ack.discard(sid)
        r = self.responses[sid]
        unacked = len(r.body) - self.acked.get(sid, 0)
        if unacked and not r.done.is_set():
            self.h2.increment_flow_control_window(unacked, stream_id=sid)
        self.acked[sid] = len(r.body)
        self.flush()

    async def get(self, path: str = "/", headers: Headers | None = None, body: bytes = b"") -> Response:
        _, r = self.request(path, headers, body)
        await r.done.wait()
        return r

    def close(self) -> None:
        self.transport.close()
