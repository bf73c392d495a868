"""A raw two-way byte relay between two connected transports: opaque TCP to a service (after
detection said "not HTTP/1") and upgraded HTTP connections (after a 101).

The L4 ``Relay`` dials its own upstream; here both transports already exist, so the pipe takes
them over with ``set_protocol``, first writing what each side sent before the switch. Same
discipline as the relay: each chunk is written straight to the peer transport, the peer is paused
while our transport is over its high-water mark, a FIN becomes ``write_eof`` toward the peer, an
error aborts the other side, and silence for the idle timeout ends both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from meshns.dataplane.http1.upstream import HIGH_WATER
from meshns.dataplane.metrics import TcpObs
from meshns.dataplane.stats import DirectionStats


class _End(asyncio.Protocol):
    __slots__ = ("count_up", "eof", "lost", "peer", "pipe", "transport")

    def __init__(self, pipe: Pipe, transport: asyncio.Transport, count_up: bool) -> None:
        self.pipe = pipe
        self.transport = transport
        self.count_up = count_up
        self.eof = False
        self.lost = False
        self.peer: _End

    def data_received(self, data: bytes) -> None:
        self.peer.transport.write(data)
        pipe = self.pipe
        pipe.touched = True
        n = len(data)
        if self.count_up:
            pipe.dstats.bytes_up += n
            pipe.obs.received += n
        else:
            pipe.dstats.bytes_down += n
            pipe.obs.sent += n

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer.transport
        if not peer.is_closing():
            if peer.can_write_eof():
                peer.write_eof()
            else:
                peer.close()
        if self.peer.eof:
            self.transport.close()
            peer.close()
        return True

    def pause_writing(self) -> None:
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        other = self.peer
        if not other.lost:
            if exc is None:
                other.transport.close()
            else:
                other.transport.abort()
        if other.lost:
            self.pipe.finish()


class Pipe:
    __slots__ = ("client", "done", "dstats", "finished", "idle_s", "obs", "timer", "touched", "upstream")

    def __init__(self, client: asyncio.Transport, upstream: asyncio.Transport, dstats: DirectionStats,
                 idle_s: float, done: Callable[[], None], obs: TcpObs) -> None:
        self.dstats = dstats
        self.obs = obs
        self.idle_s = idle_s
        self.done = done
        self.touched = False
        self.finished = False
        self.client = _End(self, client, True)
        self.upstream = _End(self, upstream, False)
        self.client.peer = self.upstream
        self.upstream.peer = self.client
        self.timer: asyncio.TimerHandle | None = None

    def start(self, to_upstream: list[bytes], to_client: list[bytes], client_eof: bool = False) -> None:
        c, u = self.client.transport, self.upstream.transport
        c.set_protocol(self.client)
        u.set_protocol(self.upstream)
        if to_upstream:
            u.writelines(to_upstream)
        if to_client:
            c.writelines(to_client)
        c.resume_reading()
        u.resume_reading()
        # Protocol swaps lose a pause_writing already delivered to the old protocol; redo it.
        if u.get_write_buffer_size() > HIGH_WATER:
            c.pause_reading()
        if c.get_write_buffer_size() > HIGH_WATER:
            u.pause_reading()
        if client_eof:
            self.client.eof_received()
        self.timer = asyncio.get_running_loop().call_later(self.idle_s, self._on_idle)

    def _on_idle(self) -> None:
        if self.touched:
            self.touched = False
            self.timer = asyncio.get_running_loop().call_later(self.idle_s, self._on_idle)
            return
        self.timer = None
        self.abort()

    def abort(self) -> None:
        self.client.transport.abort()
        self.upstream.transport.abort()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
        self.done()
