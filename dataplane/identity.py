"""The sidecar's workload identity: certificate, key and trust bundle, and their TLS contexts.

They arrive from the supervisor over an inherited pipe (``identity_fd``) as JSON lines: the first
before the sidecar starts (so it never serves without an identity: fail closed), then one per
rotation (half the certificate's lifetime, or a root rotation). Each line replaces the whole
``MeshTls`` state in one step; connections already established keep the context they were made
with, so a rotation drops nothing. The key never touches a file (see meshns.mtls.tls).
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import ssl
import time

from meshns.errors import SystemFailure
from meshns.mtls.tls import WorkloadTls, client_context, decode_identity, server_context

log = logging.getLogger("meshns.dataplane.identity")


class MeshTls:
    """The current identity and the contexts built from it (None until the first one arrives)."""

    def __init__(self) -> None:
        self.workload: WorkloadTls | None = None
        self.server_ctx: ssl.SSLContext | None = None
        self.client_ctx: ssl.SSLContext | None = None
        self.client_ctx_h2: ssl.SSLContext | None = None  # the same identity, offering ALPN meshns-h2
        self.updates = 0
        self.update_errors = 0

    @property
    def identity(self) -> str:
        return self.workload.identity if self.workload is not None else ""

    def update(self, w: WorkloadTls) -> None:
        # Build every context before swapping any.
        server, client, client_h2 = server_context(w), client_context(w), client_context(w, h2=True)
        old = self.workload
        self.workload, self.server_ctx, self.client_ctx, self.client_ctx_h2 = w, server, client, client_h2
        self.updates += 1
        if old is None:
            log.info("identity %s serial=%s valid until %s", w.identity, w.serial, _stamp(w.not_after))
        elif old.serial != w.serial:
            log.info("certificate rotated: %s serial=%s valid until %s", w.identity, w.serial, _stamp(w.not_after))
        else:
            log.info("trust bundle updated (%d roots)", w.bundle_pem.count("BEGIN CERTIFICATE"))

    def feed_line(self, line: bytes) -> None:
        try:
            self.update(decode_identity(line))
        except (ValueError, ssl.SSLError) as exc:
            self.update_errors += 1
            log.error("unusable identity update, keeping the current one: %s", exc)

    def doc(self) -> dict[str, object]:
        w = self.workload
        if w is None:
            return {"identity": "", "serial": "", "not_after": None, "updates": self.updates}
        return {"identity": w.identity, "serial": w.serial, "not_before": w.not_before, "not_after": w.not_after,
                "updates": self.updates, "update_errors": self.update_errors}


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def read_first(tls: MeshTls, fd: int, timeout_s: float) -> bytes:
    """Block until the first identity line is read; returns bytes read past it (the next lines)."""
    deadline = time.monotonic() + timeout_s
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise SystemFailure(f"sidecar: no identity from the supervisor within {timeout_s:g} s")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise SystemFailure("sidecar: the identity pipe closed before an identity arrived")
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    try:
        tls.update(decode_identity(line + b"\n"))
    except (ValueError, ssl.SSLError) as exc:
        raise SystemFailure(f"sidecar: unusable identity from the supervisor: {exc}") from exc
    return rest


class IdentityPipe(asyncio.Protocol):
    """Reads later identity lines (rotations) from the supervisor's pipe."""

    def __init__(self, tls: MeshTls, pending: bytes = b"") -> None:
        self.tls = tls
        self.buf = pending
        self._drain()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._drain()

    def _drain(self) -> None:
        while b"\n" in self.buf:
            line, _, self.buf = self.buf.partition(b"\n")
            if line.strip():
                self.tls.feed_line(line + b"\n")

    def connection_lost(self, exc: Exception | None) -> None:
        # The supervisor is gone (it owns the write end). The current certificate stays valid
        # until it expires; without a supervisor nothing renews it, which `meshns status` shows.
        log.warning("identity pipe closed; keeping the current certificate")


async def attach(tls: MeshTls, fd: int, pending: bytes) -> asyncio.BaseTransport:
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    transport, _ = await loop.connect_read_pipe(lambda: IdentityPipe(tls, pending), os.fdopen(fd, "rb", buffering=0))
    return transport
