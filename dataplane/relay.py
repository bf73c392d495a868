"""The L4 byte pump: one accepted connection relayed to its original destination.

Theory of operation
-------------------
Each accepted connection becomes a ``Relay`` with two protocol objects, ``ClientSide`` (the
accepted socket) and ``UpstreamSide`` (the socket we dial). Each side's ``data_received`` writes
the chunk straight into the *other* side's transport: no event objects, no copies, no queue of our
own. Everything else happens off the per-chunk path:

* Decide at accept. ``connection_made`` recovers the original destination (``OriginalDstResolver``)
  and asks the pure ``decide()`` what to do: answer a probe, reject a loop, or forward.
* Dial at once. Forwarding starts the upstream connect immediately, without waiting for client
  bytes, so server-first protocols (SMTP banner, MySQL greeting) flow with no sniffing delay. Until
  the upstream is connected the client's "peer transport" is a ``_PendingUpstream`` that buffers up
  to ``PRECONNECT_LIMIT`` bytes and pauses the client beyond that, so the hot path has no branch
  for "not connected yet": it always writes to ``self.peer``.
* Backpressure. Each transport has write-buffer limits; when side A's transport passes the high
  mark, asyncio calls A.pause_writing and we pause reading on B (the only thing filling A), and
  resume on resume_writing. Per connection the sidecar therefore holds at most about
  ``HIGH_WATER`` plus one read chunk per direction, whatever the peers do.
* Half-close. A FIN from one peer (``eof_received``) becomes ``write_eof`` toward the other once
  the buffered bytes are out; the opposite direction keeps flowing. When both directions have seen
  EOF both transports are closed (which flushes). ``connection_lost`` on one side closes the other:
  gracefully after a clean close, with ``abort`` (RST) after an error, so a reset propagates.
* Idle timeout. One timer per connection, armed for the full timeout; data only sets a flag. When
  the timer fires with the flag set it clears it and re-arms, else both sides are aborted. So a
  connection dies after between 1x and 2x ``idle_timeout_s`` of silence, at one timer per period
  instead of a timer reset per chunk.
* Accounting. A relay is "active" from accept until both sides are lost; counters live in
  ``Stats`` (plain ints). Peer misbehaviour ends as a close, a log line and a counter, never as an
  exception escaping into the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, cast

from meshns.dataplane.addrs import OrigDst, client_addr_from
from meshns.dataplane.config import SidecarConfig
from meshns.dataplane.connect import Connector
from meshns.dataplane.decide import AnswerProbe, Direction, Forward, Reject, decide
from meshns.dataplane.http1.detect import Http1, Opaque, detect
from meshns.dataplane.observe import NULL_TCP, Observer, peername_of
from meshns.dataplane.origdst import OrigDstError, OriginalDstResolver
from meshns.dataplane.stats import DirectionStats, Stats

# A larger high mark than asyncio's 64 KiB default keeps bulk transfers from pausing on every read
# (uvloop reads up to 256 KiB at a time) while still bounding memory per connection.
HIGH_WATER: Final = 256 * 1024
LOW_WATER: Final = 64 * 1024
# What a client may send before its upstream is connected; the client is paused beyond it.
PRECONNECT_LIMIT: Final = 64 * 1024
log = logging.getLogger("meshns.dataplane.relay")

class RelayContext:
    """What all relays of one sidecar share. ``config`` carries the ports actually bound."""

    def __init__(
        self,
        config: SidecarConfig,
        stats: Stats,
        resolver: OriginalDstResolver,
        connector: Connector,
        obs: Observer,
    ) -> None:
        self.config = config
        self.obs = obs
        self.stats = stats
        self.resolver = resolver
        self.connector = connector
        self.live: set[Relay] = set()
        # Outbound connections to a service VIP are handed to this hook (the HTTP/1 data path);
        # it returns True when it took the connection over.
        self.service_hook: Callable[[asyncio.BaseTransport, OrigDst], bool] | None = None
        # Inbound connections to be forwarded are offered to this hook (HTTP/1 awareness on the
        # inbound side) with the peer's verified SPIFFE ID ("" for plaintext); it returns True
        # when it took the connection over.
        self.inbound_hook: Callable[[asyncio.BaseTransport, Forward, str], bool] | None = None

    def factory(self, direction: Direction) -> Callable[[], asyncio.Protocol]:
        dstats = self.stats.outbound if direction is Direction.OUTBOUND else self.stats.inbound
        return lambda: ClientSide(Relay(self, direction, dstats))

    def inbound(self, peer: str, dst: OrigDst) -> asyncio.Protocol:
        """An inbound connection whose destination (and, with mTLS, peer) the acceptor knows."""
        return ClientSide(Relay(self, Direction.INBOUND, self.stats.inbound, peer, dst))

    def buffered_bytes(self) -> int:
        """Bytes the sidecar holds in user space across all relays (debug and tests)."""
        return sum(relay.buffered_bytes() for relay in self.live)

    def abort_all(self) -> None:
        for relay in list(self.live):
            relay.abort("drain deadline")


REFUSAL_SNIFF_S = 1.0


def refusal_response(flag: str) -> bytes:
    body = b"upstream connect error: the application in this pod is not reachable\n"
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
            b"x-meshns-response-flags: " + flag.encode() + b"\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)


class _PendingUpstream:
    """Stands in for the upstream transport until it connects: buffers, bounded, then pauses."""

    __slots__ = ("chunks", "eof", "relay", "size")

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.chunks: list[bytes] = []
        self.size = 0
        self.eof = False

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size >= PRECONNECT_LIMIT:
            self.relay.client.transport.pause_reading()

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        self.eof = True  # only reached for transports without half-close; same meaning here

    def get_write_buffer_size(self) -> int:
        return self.size

    def pause_reading(self) -> None:
        # The client can only be slow to read once upstream bytes exist, i.e. after connecting.
        pass

    def resume_reading(self) -> None:
        pass


class _Side(asyncio.Protocol):
    """Behaviour both ends share; ``peer`` is the transport this side's bytes are written to."""

    __slots__ = ("lost", "peer", "read_done", "relay", "transport", "write_paused")

    transport: asyncio.Transport
    peer: asyncio.Transport | _PendingUpstream

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.read_done = False
        self.lost = False
        self.write_paused = False

    def pause_writing(self) -> None:
        # Our transport is full because our peer out-reads our socket: stop reading from the peer.
        self.write_paused = True
        self.peer.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.peer.resume_reading()

    def eof_received(self) -> bool:
        self.read_done = True
        peer = self.peer
        if not peer.is_closing():
            if peer.can_write_eof():
                peer.write_eof()  # sent after the bytes already buffered for the peer
            else:
                peer.close()  # e.g. a TLS transport later: no half-close, so end it after flushing
        self.relay.side_read_done()
        return True  # keep our transport open: the other direction may still be flowing


class ClientSide(_Side):
    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.relay.client = self
        self.peer = _PendingUpstream(self.relay)
        self.relay.start()

    def data_received(self, data: bytes) -> None:
        self.peer.write(data)
        relay = self.relay
        n = len(data)
        relay.dstats.bytes_up += n
        relay.obs.received += n
        relay.touched = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.relay.side_lost(self, exc)


class UpstreamSide(_Side):
    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.relay.upstream_connected(self)

    def data_received(self, data: bytes) -> None:
        self.peer.write(data)
        relay = self.relay
        n = len(data)
        relay.dstats.bytes_down += n
        relay.obs.sent += n
        relay.touched = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.relay.side_lost(self, exc)


class Relay:
    """One relayed connection: its two sides, its connect task and its idle timer."""

    __slots__ = (
        "client", "connect_task", "ctx", "direction", "dst", "dstats", "finished", "flags", "idle_timer", "obs",
        "peer", "touched", "upstream",
    )

    client: ClientSide

    def __init__(self, ctx: RelayContext, direction: Direction, dstats: DirectionStats, peer: str = "",
                 dst: OrigDst | None = None) -> None:
        self.ctx = ctx
        self.peer = peer
        self.dst = dst
        self.direction = direction
        self.dstats = dstats
        self.upstream: UpstreamSide | None = None
        self.connect_task: asyncio.Task[None] | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.touched = False
        self.finished = False
        self.obs = NULL_TCP
        self.flags = ""

    def describe(self) -> str:
        """For log lines only (costs a syscall or two, so never on the byte path)."""
        try:
            client = str(client_addr_from(self.client.transport.get_extra_info("peername")))
        except ValueError:
            client = "?"
        return f"{self.direction.value} client={client}"

    def start(self) -> None:
        ctx, transport = self.ctx, self.client.transport
        ctx.stats.active += 1
        self.dstats.accepted += 1
        ctx.live.add(self)
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        try:
            dst = self.dst if self.dst is not None else ctx.resolver.resolve(transport.get_extra_info("socket"))
        except OrigDstError as exc:
            ctx.stats.resolve_failures += 1
            log.warning("cannot recover original destination %s: %s", self.describe(), exc)
            transport.abort()
            return
        decision = decide(self.direction, dst, ctx.config)
        if isinstance(decision, AnswerProbe):
            ctx.stats.probes += 1
            transport.write(decision.text)
            transport.close()
        elif isinstance(decision, Reject):
            ctx.stats.rejects += 1
            log.warning("rejected %s: %s", self.describe(), decision.reason)
            transport.abort()
        else:
            if self.direction is Direction.OUTBOUND:
                hook = ctx.service_hook
                if hook is not None and hook(transport, dst):
                    self._finish()  # the service connection accounts for itself from here on
                    return
            elif ctx.inbound_hook is not None and ctx.inbound_hook(transport, decision, self.peer):
                self._finish()
                return
            self._observe(dst)
            self.connect_task = asyncio.ensure_future(self._connect(decision))
            self._arm_idle_timer()

    def _observe(self, dst: OrigDst) -> None:
        obs, client = self.ctx.obs, peername_of(self.client.transport)
        if self.direction is Direction.OUTBOUND:
            peers = obs.outbound(dst.ip, dst.port)
        else:
            peers = obs.inbound(client.rpartition(":")[0], dst.ip, dst.port, self.peer)
        self.obs = obs.tcp_start(peers, peers.destination_workload, client, str(dst))

    async def _connect(self, fwd: Forward) -> None:
        ctx = self.ctx
        try:
            async with asyncio.timeout(ctx.config.connect_timeout_s):
                await ctx.connector(lambda: UpstreamSide(self), fwd)
        except TimeoutError:
            ctx.stats.connect_timeouts += 1
            log.info("upstream connect timed out %s dst=%s after %ss", self.describe(), fwd.target,
                     ctx.config.connect_timeout_s)
            await self._refuse_client("UF")
        except OSError as exc:
            ctx.stats.connect_failures += 1
            log.info("upstream connect failed %s dst=%s: %s", self.describe(), fwd.target,
                     exc.strerror or exc)
            await self._refuse_client("UF")
        except Exception as exc:  # a connector bug must not escape as an unhandled task error
            ctx.stats.connect_failures += 1
            log.exception("upstream connect crashed %s dst=%s: %r", self.describe(), fwd.target, exc)
            self.client.transport.close()
        finally:
            self.connect_task = None

    async def _refuse_client(self, flag: str) -> None:
        """The app (or upstream) could not be reached. On the inbound side, an HTTP/1 client gets
        a 503 like Envoy's inbound listener gives, so the calling sidecar knows the request never
        reached the app and may retry it safely; anything else is closed. Waits at most
        REFUSAL_SNIFF_S for the client's first bytes (a meshed client sends its request at once)."""
        client = self.client
        self.flags = flag
        pending = client.peer
        if self.direction is not Direction.INBOUND or not isinstance(pending, _PendingUpstream):
            client.transport.close()
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REFUSAL_SNIFF_S
        while not client.lost:
            verdict = detect(b"".join(pending.chunks))
            if isinstance(verdict, Http1):
                client.transport.write(refusal_response(flag))
                break
            if isinstance(verdict, Opaque) or pending.eof or loop.time() >= deadline:
                break
            await asyncio.sleep(0.01)
        client.transport.close()

    def upstream_connected(self, up: UpstreamSide) -> None:
        client = self.client
        if client.lost:
            up.transport.abort()  # the client went away while we were dialling
            return
        self.upstream = up
        up.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        pending = client.peer
        assert isinstance(pending, _PendingUpstream)
        up.peer = client.transport
        client.peer = up.transport
        if pending.chunks:
            up.transport.writelines(pending.chunks)  # may fire up.pause_writing -> pauses client
        if pending.eof:
            up.transport.write_eof()
        if not client.read_done and not up.write_paused:
            client.transport.resume_reading()  # undo a pause from PRECONNECT_LIMIT, if any
        if client.write_paused:
            up.transport.pause_reading()

    def side_read_done(self) -> None:
        up = self.upstream
        if self.client.read_done and up is not None and up.read_done:
            self.client.transport.close()
            up.transport.close()

    def side_lost(self, side: _Side, exc: Exception | None) -> None:
        if exc is not None:
            self.ctx.stats.peer_errors += 1
            log.debug("peer error on %s: %s", self.direction.value, exc)
        other: _Side | None = self.upstream if side is self.client else self.client
        if other is not None and not other.lost:
            if exc is None:
                other.transport.close()
            else:
                other.transport.abort()  # propagate the reset rather than pretend a clean end
        if side is self.client and self.connect_task is not None:
            self.connect_task.cancel()
        if self.client.lost and (self.upstream is None or self.upstream.lost):
            self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.ctx.obs.tcp_end(self.obs, self.flags)
        self.ctx.stats.active -= 1
        self.ctx.live.discard(self)

    def _arm_idle_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self.idle_timer = loop.call_later(self.ctx.config.idle_timeout_s, self._on_idle_timer)

    def _on_idle_timer(self) -> None:
        if self.touched:
            self.touched = False
            self._arm_idle_timer()
            return
        self.ctx.stats.idle_timeouts += 1
        log.info("idle timeout %s after %ss", self.describe(), self.ctx.config.idle_timeout_s)
        self.abort("idle")

    def abort(self, why: str) -> None:
        """End both sides now, discarding buffered bytes (idle timeout, drain deadline)."""
        log.debug("aborting relay (%s)", why)
        if self.connect_task is not None:
            self.connect_task.cancel()
        if self.upstream is not None:
            self.upstream.transport.abort()
        self.client.transport.abort()

    def buffered_bytes(self) -> int:
        return self.client.transport.get_write_buffer_size() + self.client.peer.get_write_buffer_size()
