"""Plaintext HTTP/1 bodies of a known length moved in the kernel: splice(2) socket -> pipe -> socket.

Why. A 1 MiB response crossing two sidecars without mTLS was read into Python, parsed and
written again, in both of them. When both sockets of a hop are plain TCP and the body's length
is known, the proxy has nothing to do with those bytes but count them; the kernel moves them
from one socket to the other through a pipe, and Python only sees readiness callbacks.

How it sits next to the transports. uvloop owns the two sockets (it refuses ``add_reader`` on a
transport's fd), so the pump works on ``os.dup`` copies of them, registered in the same epoll
loop. Before the pump starts, the owner pauses reading on the source transport (so uvloop reads
nothing more), has already written whatever body bytes Python holds, and the pump waits until
the destination transport's own write buffer is empty (``drain``), so the order of bytes on the
wire is kept. The pump then moves exactly ``total`` bytes: never one more, because the next
response on a keep-alive connection must stay in the socket for the parser. It ends by calling
its owner back exactly once (``SpliceOwner``), after its own cleanup (readers, writers and the
duplicated fds removed and closed, the pipe back to the free list or closed). ``stop`` ends it
from outside (timeouts, drain, a lost peer) without a callback. A duplicated fd keeps its socket
open, so every end of a pump must come through ``_close``; the owner's cancellation paths
(``Exchange.detach``, ``up_lost``) call ``stop``.

What is spliced is decided by ``can_splice`` (pure, table-tested): both transports plain kernel
TCP sockets (``plain_tcp``: not our TLS stream, not an SSL transport), a length-framed body the
proxy forwards as is (not re-chunked, not a HEAD or 204/304 answer), and at least
``SPLICE_MIN_BYTES`` of it left, so small bodies keep the ordinary path.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
from typing import Any, Final, Protocol

from uvloop.loop import TCPTransport  # type: ignore[attr-defined]  # (not in uvloop's stubs)

# Below this the ordinary path (one or two reads) costs less than setting a pump up.
SPLICE_MIN_BYTES: Final = 64 * 1024
# The pipe's capacity: what one splice() may move. A pipe's pages count against its user's budget
# (fs/pipe-user-pages-soft, 64 MiB by default), and every sidecar of a host runs as the same user:
# 256 KiB pipes, two kept per sidecar, leave room for many. Measured on loopback, 64 KiB to 1 MiB
# made no difference (a callback moves what the socket holds in a few rounds anyway). Over the
# budget the kernel refuses to grow a pipe; the pump then works with the size it got.
PIPE_BYTES: Final = 256 * 1024
FREE_PIPES_MAX: Final = 2
# Syscall rounds per readiness callback: a fast pair of sockets must not hold the loop.
ROUNDS: Final = 8
_FLAGS: Final = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
# The transports whose socket is the kernel's TCP socket with nothing between: uvloop's TCP
# transport (the sidecar runs on uvloop). TLS transports, our TlsStream and test fakes are not.
_PLAIN_TYPES: Final[tuple[type, ...]] = (TCPTransport,)


def can_splice(*, src_plain: bool, dst_plain: bool, length_framed: bool, reframed: bool, remaining: int,
               min_bytes: int = SPLICE_MIN_BYTES) -> bool:
    """Whether the rest of a body may move in the kernel: both hops plain TCP, a Content-Length
    body forwarded byte for byte (not re-chunked), and at least ``min_bytes`` of it left."""
    return src_plain and dst_plain and length_framed and not reframed and remaining >= min_bytes > 0


def plain_tcp(transport: Any) -> bool:
    """A transport straight on a kernel TCP socket, no TLS layer (see _PLAIN_TYPES)."""
    return type(transport) in _PLAIN_TYPES and transport.get_extra_info("sslcontext") is None


class PipePool:
    """A few pipes kept for the next pump (a pipe and its F_SETPIPE_SZ cost three syscalls)."""

    def __init__(self, keep: int = FREE_PIPES_MAX, size: int = PIPE_BYTES) -> None:
        self.keep = keep
        self.size = size
        self.free: list[tuple[int, int, int]] = []  # (read fd, write fd, capacity)

    def get(self) -> tuple[int, int, int]:
        if self.free:
            return self.free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            cap = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, self.size)
        except OSError:  # over the per-user pipe budget: the pipe keeps its default size
            cap = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
        return r, w, cap

    def put(self, pipe: tuple[int, int, int]) -> None:
        """An empty pipe back to the list (the caller knows it holds no byte)."""
        if len(self.free) < self.keep:
            self.free.append(pipe)
        else:
            close_pipe(pipe)

    def close_all(self) -> None:
        while self.free:
            close_pipe(self.free.pop())


def close_pipe(pipe: tuple[int, int, int]) -> None:
    os.close(pipe[0])
    os.close(pipe[1])


PIPES: Final = PipePool()


class SpliceOwner(Protocol):
    """Who a pump reports to (exactly one of the first three, once, after the pump's cleanup)."""

    def splice_done(self, pump: SplicePump) -> None:
        """All ``total`` bytes reached the destination socket."""

    def splice_src_failed(self, pump: SplicePump, why: str) -> None:
        """The source ended (EOF) or failed before ``total`` bytes."""

    def splice_dst_failed(self, pump: SplicePump, why: str) -> None:
        """The destination socket failed (the peer is gone)."""

    def splice_blocked(self, blocked: bool) -> None:
        """The destination socket is full (True) / took bytes again (False): what the
        destination transport's pause_writing / resume_writing say on the ordinary path."""


class SplicePump:
    """Moves ``total`` bytes from ``src``'s socket to ``dst``'s (both transports; see the module)."""

    __slots__ = ("blocked", "dst", "dst_fd", "inpipe", "loop", "moved", "owner", "pipe", "pipes", "read",
                 "reading", "src_fd", "total", "waiting_drain", "writing")

    def __init__(self, loop: asyncio.AbstractEventLoop, owner: SpliceOwner, src: asyncio.Transport,
                 dst: asyncio.Transport, total: int, pipes: PipePool = PIPES) -> None:
        self.loop = loop
        self.pipes = pipes
        self.owner: SpliceOwner | None = owner
        self.dst = dst
        self.total = total
        self.read = 0  # bytes taken from the source
        self.moved = 0  # bytes given to the destination socket
        self.inpipe = 0
        self.reading = False  # a reader is registered on src_fd
        self.writing = False  # a writer is registered on dst_fd
        self.blocked = False
        self.waiting_drain = False
        self.src_fd = -1
        self.dst_fd = -1
        self.pipe: tuple[int, int, int] | None = None
        src_sock, dst_sock = src.get_extra_info("socket"), dst.get_extra_info("socket")
        try:
            self.src_fd = os.dup(src_sock.fileno())
            self.dst_fd = os.dup(dst_sock.fileno())
            self.pipe = pipes.get()
        except BaseException:
            self._close(False)
            raise

    def start(self) -> None:
        """Begin now if the destination transport has nothing buffered, else once it has not."""
        if self.dst.get_write_buffer_size():
            self.waiting_drain = True
            self._want(False, True)
            return
        self._run()

    def stop(self) -> None:
        """End from outside, with no callback (the owner is tearing the exchange down)."""
        self.owner = None
        self._close(False)

    @property
    def running(self) -> bool:
        return self.pipe is not None

    # the machinery

    def _want(self, read: bool, write: bool) -> None:
        loop = self.loop
        if read != self.reading:
            self.reading = read
            if read:
                loop.add_reader(self.src_fd, self._run)
            else:
                loop.remove_reader(self.src_fd)
        if write != self.writing:
            self.writing = write
            if write:
                loop.add_writer(self.dst_fd, self._on_writable)
            else:
                loop.remove_writer(self.dst_fd)

    def _on_writable(self) -> None:
        if self.waiting_drain:
            if self.dst.is_closing():
                self._want(False, False)  # its connection_lost comes and stops the pump
                return
            # uvloop flushes its own buffer on the same readiness (and counts it done on the
            # next loop iteration); until it is empty, wait.
            if self.dst.get_write_buffer_size():
                return
            self.waiting_drain = False
        self._run()

    def _run(self) -> None:
        pipe = self.pipe
        if pipe is None:
            return
        r, w, cap = pipe
        dst_again = False
        for _ in range(ROUNDS):
            progressed = False
            want = min(self.total - self.read, cap - self.inpipe)
            if want > 0:
                try:
                    n = os.splice(self.src_fd, w, want, flags=_FLAGS)
                except BlockingIOError:
                    pass  # nothing to read, or the pipe is full (its slots are pages, not bytes)
                except OSError as exc:
                    self._fail_src(f"upstream failed mid-body: {os.strerror(exc.errno or 0)}")
                    return
                else:
                    if n == 0:
                        self._fail_src(f"upstream closed mid-body ({self.total - self.read} bytes short)")
                        return
                    self.read += n
                    self.inpipe += n
                    progressed = True
            dst_again = False
            if self.inpipe:
                try:
                    n = os.splice(r, self.dst_fd, self.inpipe, flags=_FLAGS)
                except BlockingIOError:
                    dst_again = True
                except OSError as exc:
                    self._fail_dst(exc)
                    return
                else:
                    self.inpipe -= n
                    self.moved += n
                    progressed = True
                    if self.moved == self.total:
                        self._finish()
                        return
            if not progressed:
                break
        # Wait for what lets us go on: the destination while the pipe holds bytes (a write
        # round also reads again), else the source. Level-triggered: a side ready now calls back
        # on the next loop iteration, after the other callbacks had their turn.
        self._set_blocked(dst_again)
        self._want(self.inpipe == 0 and self.read < self.total, self.inpipe > 0)

    def _set_blocked(self, blocked: bool) -> None:
        if blocked != self.blocked:
            self.blocked = blocked
            if self.owner is not None:
                self.owner.splice_blocked(blocked)

    def _finish(self) -> None:
        owner = self.owner
        self._close(True)
        if owner is not None:
            owner.splice_done(self)

    def _fail_src(self, why: str) -> None:
        owner = self.owner
        self._close(False)
        if owner is not None:
            owner.splice_src_failed(self, why)

    def _fail_dst(self, exc: OSError) -> None:
        owner = self.owner
        self._close(False)
        if owner is not None:
            owner.splice_dst_failed(self, f"downstream failed: {errno.errorcode.get(exc.errno or 0, exc)}")

    def _close(self, clean: bool) -> None:
        """Readers and writers off, duplicated fds closed, the pipe kept when it is empty."""
        if self.blocked and self.owner is not None:
            self.blocked = False
            self.owner.splice_blocked(False)
        self.owner = None
        with contextlib.suppress(Exception):  # the loop may be closed already
            self._want(False, False)
        self.reading = self.writing = False
        for fd in (self.src_fd, self.dst_fd):
            if fd >= 0:
                os.close(fd)
        self.src_fd = self.dst_fd = -1
        pipe, self.pipe = self.pipe, None
        if pipe is not None:
            if clean and self.inpipe == 0:
                self.pipes.put(pipe)
            else:
                close_pipe(pipe)
