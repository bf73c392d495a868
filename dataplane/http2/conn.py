"""One HTTP/2 connection end (h2's state machine on an asyncio transport), for both sides.

Theory of operation. ``H2Conn`` owns an ``h2.connection.H2Connection`` and its transport: bytes
in go to ``receive_data`` and every resulting event to a ``on_<event>`` method of the subclass;
whatever h2 queued goes out at the end of each call that can produce frames (``flush``).

Flow control is end to end, never buffered past a window. A DATA frame received is
acknowledged (the window given back to the sender) only when its bytes have been handed to the
other side's connection, so a reader that stops on one stream stops its sender on that stream
alone: the other streams of both connections keep flowing. The connection window is made large
(``CONN_WINDOW``: room for every stream's window at once), so one stalled stream cannot use up
the connection's. Bytes waiting for the peer's window sit in a per-stream ``Outbox`` with the
callbacks that will acknowledge them; their size is bounded by the window of the side they came
from, so the memory of a connection is bounded by streams x stream window.

A peer that stops reading our socket fills the transport's buffer: we stop reading its frames
too (``pause_writing``), so its PINGs and SETTINGS cannot pile acknowledgements up in memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from typing import Final, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

log = logging.getLogger("meshns.dataplane.http2")

Headers = list[tuple[bytes, bytes]]
Ack = Callable[[int], None]

STREAM_WINDOW: Final = 256 * 1024
MAX_CONCURRENT_STREAMS: Final = 100
CONN_WINDOW: Final = STREAM_WINDOW * MAX_CONCURRENT_STREAMS
MAX_HEADER_LIST_SIZE: Final = 64 * 1024
CLOSE_DRAIN_S: Final = 1.0
HIGH_WATER: Final = 512 * 1024
LOW_WATER: Final = 128 * 1024

# RFC 9113 error codes used here.
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
ENHANCE_YOUR_CALM: Final = 0xB


class Outbox:
    """Body bytes of one stream waiting for the peer's window, and how the stream ends."""

    __slots__ = ("chunks", "end", "size", "trailers")

    def __init__(self) -> None:
        self.chunks: collections.deque[tuple[memoryview, int, Ack | None]] = collections.deque()
        self.size = 0
        self.end = False
        self.trailers: Headers | None = None


class H2Conn(asyncio.Protocol):
    """The shared half: transport, h2 state machine, outboxes, flushing and pausing."""

    transport: asyncio.Transport

    def __init__(self, client_side: bool) -> None:
        config = h2.config.H2Configuration(client_side=client_side, header_encoding=None,
                                           validate_outbound_headers=False, normalize_outbound_headers=False)
        self.h2 = h2.connection.H2Connection(config)
        codes = h2.settings.SettingCodes
        initial = {codes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS, codes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                   codes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE}
        if client_side:
            initial[codes.ENABLE_PUSH] = 0  # server push refused: a proxy has no use for it
        self.h2.local_settings = h2.settings.Settings(client=client_side, initial_values=initial)
        self.outboxes: dict[int, Outbox] = {}
        self.closed = False
        self.reading_paused = False

    # -- the transport ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONN_WINDOW - 65535)
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued a GOAWAY with the matching code (ENHANCE_YOUR_CALM for an oversized
            # header list, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, ...): send it, then close.
            self.protocol_failed(f"{type(exc).__name__}: {exc}")
            self.flush()
            self.shut()
            return
        for event in events:
            self.dispatch(event)
            if self.closed:
                return
        self.flush()

    def dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.WindowUpdated):
            if event.stream_id:
                self.pump(event.stream_id)
            else:
                for sid in list(self.outboxes):
                    self.pump(sid)
        else:
            self.on_event(event)

    def on_event(self, event: h2.events.Event) -> None:
        raise NotImplementedError

    def protocol_failed(self, why: str) -> None:
        log.info("HTTP/2 protocol error from %s: %s", self.describe(), why)

    def describe(self) -> str:
        peer = self.transport.get_extra_info("peername") if hasattr(self, "transport") else None
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "-"

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def keep_streams_after_goaway(self) -> None:
        """A graceful GOAWAY (NO_ERROR) from the peer: the streams it already took still finish
        (RFC 9113 6.8), but h2's connection state machine closes at any GOAWAY and would refuse
        their frames. Reopen it; the caller makes sure no new stream starts."""
        states = h2.connection.ConnectionState
        self.h2.state_machine.state = states.CLIENT_OPEN if self.h2.config.client_side else states.SERVER_OPEN

    def goaway(self, code: int, why: str = "") -> None:
        """GOAWAY with ``code`` (the last stream we processed), then close."""
        if self.closed:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.close_connection(error_code=code, additional_data=why.encode()[:200] or None)
        self.flush()
        self.shut()

    def shut(self) -> None:
        """Close after the last frame (a GOAWAY) is out. As Envoy's delayed close: the write side
        ends first and what the peer still sends is read and dropped for ``CLOSE_DRAIN_S``,
        because closing a socket with unread bytes sends a RST that can destroy the GOAWAY
        before the peer reads it (a flooding peer always has bytes in flight)."""
        if self.closed:
            return
        self.closed = True  # data_received drops everything from now on
        t = self.transport
        if t.is_closing():
            return
        if not t.can_write_eof():
            t.close()
            return
        t.write_eof()
        if self.reading_paused:
            self.reading_paused = False
            t.resume_reading()
        asyncio.get_running_loop().call_later(CLOSE_DRAIN_S, t.close)

    def pause_writing(self) -> None:
        if not self.reading_paused and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.reading_paused and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    # -- sending on a stream ------------------------------------------------------------------

    def send_headers(self, sid: int, headers: Headers, end: bool = False) -> bool:
        try:
            self.h2.send_headers(sid, headers, end_stream=end)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as exc:
            log.debug("headers on stream %d not sent: %s", sid, exc)
            return False
        self.flush()
        return True

    def send_body(self, sid: int, data: bytes, ack: Ack | None, fc_len: int) -> None:
        """Queue ``data`` for stream ``sid``; ``ack(fc_len)`` runs once all of it was framed."""
        box = self.outboxes.get(sid)
        if box is None:
            box = self.outboxes[sid] = Outbox()
        box.chunks.append((memoryview(data), fc_len, ack))
        box.size += len(data)
        self.pump(sid)

    def send_end(self, sid: int, trailers: Headers | None = None) -> None:
        box = self.outboxes.get(sid)
        if box is None:
            box = self.outboxes[sid] = Outbox()
        box.end = True
        box.trailers = trailers
        self.pump(sid)

    def pump(self, sid: int) -> None:
        """Frame what the windows allow; end the stream once the outbox is empty."""
        box = self.outboxes.get(sid)
        if box is None:
            return
        h2c = self.h2
        try:
            while box.chunks:
                view, fc_len, ack = box.chunks[0]
                room = min(h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
                if room <= 0 and len(view):
                    break
                n = min(room, len(view))
                if n:
                    h2c.send_data(sid, view[:n].tobytes())
                    box.size -= n
                if n == len(view):
                    box.chunks.popleft()
                    if ack is not None and fc_len:
                        ack(fc_len)
                else:
                    box.chunks[0] = (view[n:], fc_len, ack)
            if not box.chunks and box.end:
                del self.outboxes[sid]
                if box.trailers is not None:
                    h2c.send_headers(sid, box.trailers, end_stream=True)
                else:
                    h2c.end_stream(sid)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError) as exc:
            log.debug("stream %d: send stopped: %s", sid, exc)
            self.drop_outbox(sid)
        self.flush()

    def drop_outbox(self, sid: int) -> None:
        """The stream is gone: its queued bytes are dropped, and acknowledged so the sender on
        the other side is not left short of window for bytes nobody will read."""
        box = self.outboxes.pop(sid, None)
        if box is None:
            return
        for _, fc_len, ack in box.chunks:
            if ack is not None and fc_len:
                ack(fc_len)

    def drop_all_outboxes(self) -> None:
        """The connection is gone: what it still had to send is acknowledged to the other side,
        whose connection (shared by other streams) would otherwise lose that much window for good."""
        for sid in list(self.outboxes):
            self.drop_outbox(sid)

    def reset(self, sid: int, code: int) -> None:
        self.drop_outbox(sid)
        try:
            self.h2.reset_stream(sid, code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            return
        self.flush()

    def ack(self, sid: int, n: int) -> None:
        """Give ``n`` flow-controlled bytes of stream ``sid`` back to the peer."""
        if self.closed:
            return
        try:
            self.h2.acknowledge_received_data(n, sid)
        except (h2.exceptions.ProtocolError, ValueError, KeyError):
            return
        self.flush()

    def buffered_bytes(self) -> int:
        return self.transport.get_write_buffer_size() + sum(b.size for b in self.outboxes.values())
