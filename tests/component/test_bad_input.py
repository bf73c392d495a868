"""Bad input on every listener of an in-process sidecar: refused with the right status, the
connection closed, nothing of it at the app, counted and logged, and other clients served.

The bad inputs are the attacker's table (tests/integration/apps/badclient.py), sent to the
outbound listener (a service VIP) and to the plaintext inbound listener, with both parsers, as
the first request of a connection and after a good one (the parser path of a keep-alive
connection). The app records every byte it gets: only the good requests may be there.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import logging
import random
import re
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from httpkit import IPS, LO, Client, backends, service, sidecar, uvloop_test, workload

from meshns.dataplane.addrs import OrigDst
from meshns.dataplane.config import SidecarConfig
from meshns.dataplane.identity import MeshTls
from meshns.dataplane.origdst import FixedResolver
from meshns.dataplane.server import Sidecar
from meshns.mtls.ca import CertAuthority
from meshns.mtls.tls import client_context
from meshns.snapshot import Endpoint, Service, ServicePort, Snapshot


def _load_badclient() -> Any:
    path = Path(__file__).resolve().parents[1] / "integration" / "apps" / "badclient.py"
    spec = importlib.util.spec_from_file_location("badclient", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BAD = _load_badclient()
GOOD = b"GET /good HTTP/1.1\r\nHost: a\r\n\r\n"
STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")
GUARD_S = 10.0  # a guard against hangs, never an assertion on duration


class RawApp:
    """An app that keeps every byte it receives and answers each request head with 200 "ok"
    (good requests have no body)."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        buf = b""
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                self.received += data
                buf += data
                while (i := buf.find(b"\r\n\r\n")) >= 0:
                    buf = buf[i + 4:]
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        writer.close()

    def foreign(self) -> list[bytes]:
        """Whatever reached the app that is not a good request's head."""
        pieces = bytes(self.received).split(b"\r\n\r\n")
        return [p[:80] for p in pieces if p and not p.startswith(b"GET /good HTTP/1.1\r\n")]


@contextlib.asynccontextmanager
async def app_server(handler: Callable[..., Coroutine[Any, Any, None]]) -> AsyncIterator[int]:
    srv = await asyncio.start_server(handler, IPS[0], 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()


@contextlib.asynccontextmanager
async def listener(kind: str, app_port: int, parser: str, **over: Any) -> AsyncIterator[tuple[Sidecar, int]]:
    """A sidecar whose ``kind`` listener ("outbound" to a service, "inbound" to the app) leads to
    the app on IPS[0]:app_port; yields (sidecar, port of that listener)."""
    if kind == "outbound":
        async with sidecar(service(app_port, 1), parser=parser, metrics_port=-1, **over) as side:
            assert side.outbound_addr is not None
            yield side, side.outbound_addr.port
        return
    tls = over.pop("tls", None)
    cfg: dict[str, Any] = {"pod": "server-0", "pod_ip": LO, "outbound_port": 0, "inbound_port": 0,
                           "admin_port": 0, "probe_port": 15002, "http_parser": parser, **over}
    side = Sidecar(SidecarConfig(**cfg), resolver=FixedResolver(OrigDst(IPS[0], app_port)),
                   rng=random.Random(3), tls=tls)
    side.store.set(Snapshot(version=1, pod="server-0", services=(
        Service("ratings", "10.96.0.2", (ServicePort(9080, app_port),), endpoints=(Endpoint("server-0", IPS[0]),)),)))
    await side.start()
    try:
        assert side.inbound_addr is not None
        yield side, side.inbound_addr.port
    finally:
        await side.drain()


async def exchange(port: int, data: bytes, *, then: bytes = b"", pause_s: float = 0.0) -> tuple[bytes, bool]:
    """Send ``data`` (and ``then`` after ``pause_s``), read until the sidecar closes; returns
    (everything read, whether the connection ended within the guard)."""
    reader, writer = await asyncio.open_connection(LO, port)
    out = b""
    ended = False
    try:
        writer.write(data)
        if then:
            await asyncio.sleep(pause_s)
            writer.write(then)
        async with asyncio.timeout(GUARD_S):
            while chunk := await reader.read(65536):
                out += chunk
            ended = True
    except (ConnectionResetError, BrokenPipeError):
        ended = True
    except TimeoutError:
        pass
    writer.close()
    return out, ended


async def good_request(port: int) -> int:
    out, _ = await exchange(port, GOOD.replace(b"Host: a\r\n", b"Host: a\r\nConnection: close\r\n"))
    m = STATUS.match(out)
    return int(m.group(1)) if m else 0


def statuses(out: bytes) -> list[int]:
    return [int(s) for s in STATUS.findall(out)]


@pytest.mark.parametrize("first", [True, False], ids=["first-request", "after-a-good-one"])
@pytest.mark.parametrize("kind", ["outbound", "inbound"])
@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_every_bad_input_is_refused(parser: str, kind: str, first: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="meshns.dataplane.http1.refuse")

    @uvloop_test
    async def run() -> None:
        app = RawApp()
        async with app_server(app.handle) as app_port, listener(kind, app_port, parser) as (side, port):
            wrong = []
            for name, data, status in BAD.CASES:
                good = asyncio.ensure_future(good_request(port))  # another client, meanwhile
                out, ended = await exchange(port, data if first else GOOD + data)
                want = [status] if first else [200, status]
                if statuses(out) != want or not ended or await good != 200:
                    wrong.append((name, want, statuses(out), out[:60], ended, good.result()))
            assert wrong == []
            assert app.foreign() == []  # nothing of a bad request reached the app
            expected = collections.Counter(status for _, _, status in BAD.CASES)
            doc = side.stats.as_dict()
            assert side.stats.http_bad_requests == len(BAD.CASES)
            assert {s: doc[f"http_{s}"] for s in expected} == dict(expected)
            text = side.metrics.exposition().decode()
            for code, n in expected.items():
                assert f'meshns_http_bad_requests_total{{code="{code}",listener="{kind}"}} {float(n)}' in text
            # every refusal is a row of istio_requests_total (response flag DPE), like Envoy's
            rows = re.findall(r'istio_requests_total\{([^}]*)\} (\S+)', text)
            dpe = sum(float(v) for labels, v in rows if 'response_flags="DPE"' in labels)
            assert dpe == len(BAD.CASES)
        logged = [r.getMessage() for r in caplog.records if r.name == "meshns.dataplane.http1.refuse"]
        assert len(logged) == len(BAD.CASES)
        assert all(f"refused {kind} request from 127.0.0.1:" in m for m in logged), logged[:3]

    run()


@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_requests_at_the_limits_are_served(parser: str) -> None:
    @uvloop_test
    async def run() -> None:
        app = RawApp()
        async with app_server(app.handle) as app_port, listener("outbound", app_port, parser) as (side, port):
            for name, data in BAD.GOOD_LIMITS:
                out, _ = await exchange(port, data)
                assert statuses(out) == [200], (name, out[:80])
            assert side.stats.http_bad_requests == 0

    run()


# 413: max_request_body_bytes


@pytest.mark.parametrize("kind", ["outbound", "inbound"])
@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_declared_body_over_the_limit_is_413_before_anything_goes_upstream(parser: str, kind: str) -> None:
    @uvloop_test
    async def run() -> None:
        app = RawApp()
        async with app_server(app.handle) as app_port, \
                listener(kind, app_port, parser, max_request_body_bytes=1000) as (side, port):
            head = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"
            out, ended = await exchange(port, head % 1001 + b"x" * 1001)
            assert statuses(out) == [413] and ended
            assert b"Payload Too Large" in out and b"connection: close" in out
            # a declared length over the limit is refused before its body is even sent
            out, ended = await exchange(port, head % 10_000_000)
            assert statuses(out) == [413] and ended
            assert app.received == b""
            out, _ = await exchange(port, (head % 1000).replace(b"Host: a", b"Host: a\r\nConnection: close")
                                    + b"x" * 1000)
            assert statuses(out) == [200]  # at the limit: served
            assert side.stats.http_413 == 2

    run()


@pytest.mark.parametrize("kind", ["outbound", "inbound"])
@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_chunked_body_growing_past_the_limit_resets_the_try_and_gets_413(parser: str, kind: str) -> None:
    @uvloop_test
    async def run() -> None:
        # The h11 backend answers only once the whole request is in: no response has started.
        async with backends(1) as (app_port, bes), \
                listener(kind, app_port, parser, max_request_body_bytes=1000) as (side, port):
            head = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            chunk = b"258\r\n" + b"y" * 600 + b"\r\n"
            # the head and a first chunk go upstream; the second chunk makes it 1200 > 1000
            out, ended = await exchange(port, head + chunk, then=chunk + b"0\r\n\r\n", pause_s=0.3)
            assert statuses(out) == [413] and ended
            await asyncio.sleep(0.1)
            assert bes[0].requests == 0  # the upstream try was reset: the app never got a request
            assert side.stats.http_413 == 1
            client = await _client(port)
            assert (await client.request("GET", "/after")).status == 200
            client.close()

    run()


async def _client(port: int) -> Client:
    r, w = await asyncio.open_connection(LO, port)
    return Client(r, w)


@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_chunked_body_past_the_limit_after_the_response_started_resets_the_client(parser: str) -> None:
    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")  # answers early, then reads
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        writer.close()

    @uvloop_test
    async def run() -> None:
        async with app_server(early) as app_port, \
                listener("outbound", app_port, parser, max_request_body_bytes=1000) as (side, port):
            head = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            chunk = b"258\r\n" + b"y" * 600 + b"\r\n"
            out, ended = await exchange(port, head + chunk, then=chunk, pause_s=0.3)
            assert statuses(out) == [200] and ended
            assert len(out.split(b"\r\n\r\n", 1)[1]) < 100  # reset: the truncated body never looks whole
            assert side.stats.http_413 == 1

    run()


# 408: request_headers_timeout_s


@pytest.mark.parametrize("kind", ["outbound", "inbound"])
@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_slowloris_gets_408_and_idle_keepalive_does_not(parser: str, kind: str) -> None:
    @uvloop_test
    async def run() -> None:
        app = RawApp()
        async with app_server(app.handle) as app_port, \
                listener(kind, app_port, parser, request_headers_timeout_s=0.5) as (side, port):
            # a head trickling in, one byte every 0.1 s, never finished
            reader, writer = await asyncio.open_connection(LO, port)
            writer.write(b"GET /slow HTTP/1.1\r\nHost: a\r\n")
            got = b""
            async with asyncio.timeout(GUARD_S):
                while not got:
                    with contextlib.suppress(TimeoutError):
                        got = await asyncio.wait_for(reader.read(4096), 0.1)
                    writer.write(b"a")
            assert got.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b"connection: close" in got
            with contextlib.suppress(ConnectionError):
                async with asyncio.timeout(GUARD_S):
                    assert await reader.read() == b""  # then closed
            writer.close()
            # "METHOD SP", then silence, on the first request: 408 as well
            out, ended = await exchange(port, b"GET ")
            assert statuses(out) == [408] and ended
            # a keep-alive connection idle between requests is the idle timeout's, not this one's
            client = await _client(port)
            assert (await client.request("GET", "/good")).status == 200
            await asyncio.sleep(1.2)
            assert (await client.request("GET", "/good")).status == 200
            # then a head that never ends, on the same connection: its own clock, its own 408
            await asyncio.sleep(0.2)
            client.writer.write(b"GET /slow HTTP/1.1\r\nHost: a\r\n")
            async with asyncio.timeout(GUARD_S):
                got = await client.reader.read(4096)
            assert got.startswith(b"HTTP/1.1 408 ")
            client.close()
            assert side.stats.http_408 == 3
            assert app.foreign() == []

    run()


@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_a_silent_non_http_start_is_relayed_not_refused(parser: str) -> None:
    @uvloop_test
    async def run() -> None:
        app = RawApp()
        async with app_server(app.handle) as app_port, \
                listener("outbound", app_port, parser, request_headers_timeout_s=0.3) as (side, port):
            _reader, writer = await asyncio.open_connection(LO, port)
            writer.write(b"G")  # not yet a method and a space: after the timeout, opaque TCP
            async with asyncio.timeout(GUARD_S):
                while app.received != b"G":
                    await asyncio.sleep(0.05)
            writer.close()
            assert side.stats.http_408 == 0

    run()


# a client that never reads its response


@pytest.mark.parametrize("kind", ["outbound", "inbound"])
def test_a_client_that_never_reads_holds_the_upstream_paused_and_is_cut_at_idle(kind: str) -> None:
    @uvloop_test
    async def run() -> None:
        total = 50_000_000
        async with backends(1) as (app_port, _bes), \
                listener(kind, app_port, "auto", idle_timeout_s=1.0) as (side, port):
            reader, writer = await asyncio.open_connection(LO, port)
            writer.write(b"GET /bulk/%d HTTP/1.1\r\nHost: a\r\n\r\n" % total)
            peak = 0
            served = []
            async with asyncio.timeout(GUARD_S):
                while side.stats.idle_timeouts == 0:
                    await asyncio.sleep(0.05)
                    peak = max(peak, side.buffered_bytes())
                    if not served:  # another client is served meanwhile
                        client = await _client(port)
                        served.append((await client.request("GET", "/other")).status)
                        client.close()
            assert served == [200]
            assert peak < 4 * 1024 * 1024, peak  # user-space buffers stay bounded
            got = 0
            with contextlib.suppress(ConnectionError):
                async with asyncio.timeout(GUARD_S):
                    while chunk := await reader.read(1 << 20):
                        got += len(chunk)
            assert got < total  # cut by the idle timeout, not finished
            writer.close()

    run()


# TLS on the inbound mTLS listener


async def _raw(port: int, data: bytes, *, half_close: bool = False) -> str:
    """How a raw connection ends: "reset" or "closed"; anything but a TLS alert (record type
    0x15, the TLS stack telling why) before that is an answer, and wrong."""
    reader, writer = await asyncio.open_connection(LO, port)
    writer.write(data)
    if half_close:
        writer.write_eof()
    got = b""
    how = "closed"
    try:
        async with asyncio.timeout(GUARD_S):
            while chunk := await reader.read(4096):
                got += chunk
    except ConnectionResetError:
        how = "reset"
    finally:
        writer.close()
    return how if not got or got[0] == 0x15 else "answered " + got[:20].hex()


async def _tls(port: int, ctx: ssl.SSLContext) -> str:
    try:
        reader, writer = await asyncio.open_connection(LO, port, ssl=ctx, server_hostname="x")
    except (ssl.SSLError, ConnectionError):
        return "tls-failed"
    try:
        writer.write(GOOD.replace(b"Host: a\r\n", b"Host: a\r\nConnection: close\r\n"))
        async with asyncio.timeout(GUARD_S):
            got = await reader.read()
    except (ssl.SSLError, ConnectionError):
        return "tls-failed"
    finally:
        writer.close()
    return "tls-failed" if not got else got[:12].decode()


def test_tls_garbage_truncated_and_foreign_clients_are_reset_while_meshed_ones_are_served(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="meshns.dataplane.accept")
    ca = CertAuthority.init(tmp_path / "ca", "cluster.local", 3600)
    foreign_ca = CertAuthority.init(tmp_path / "foreign", "cluster.local", 3600)
    tls = MeshTls()
    tls.update(workload(ca, "server"))
    meshed = client_context(workload(ca, "client"))
    foreign = client_context(workload(foreign_ca, "client"))
    no_cert = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    no_cert.check_hostname = False
    no_cert.verify_mode = ssl.CERT_NONE

    @uvloop_test
    async def run() -> None:
        app = RawApp()
        async with app_server(app.handle) as app_port, \
                listener("inbound", app_port, "auto", tls=tls, tls_handshake_timeout_s=0.5) as (side, port):
            attacks = [
                _raw(port, BAD.TLS_GARBAGE),
                _raw(port, BAD.TLS_TRUNCATED, half_close=True),
                _raw(port, BAD.TLS_TRUNCATED),  # then silence: the handshake timeout ends it
                _tls(port, no_cert),
                _tls(port, foreign),
            ]
            results = asyncio.gather(*attacks)
            assert await _tls(port, meshed) == "HTTP/1.1 200"  # served meanwhile
            got = await results
            assert all(g in ("reset", "closed") for g in got[:3]), got
            assert got[3:] == ["tls-failed", "tls-failed"], got
            # The client trusting another CA refuses our certificate and closes, and asyncio's
            # TLS sends no alert: the server cannot tell that from a client giving up.
            assert (side.stats.tls_handshake_failures, side.stats.tls_handshake_abandoned) == (4, 1)
            assert side.stats.tls_in == 1
            assert app.foreign() == []

    run()
    failed = [r.getMessage() for r in caplog.records if "mTLS handshake with" in r.getMessage()]
    assert len(failed) == 4


async def _hello_then_close(port: int, ctx: ssl.SSLContext, *, reset: bool) -> bytes:
    """A real ClientHello; once the server's answer arrives, close (FIN) or reset: a client
    giving up mid-handshake. Returns the first bytes of the answer."""
    hello = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="x")
    with contextlib.suppress(ssl.SSLWantReadError):
        hello.do_handshake()
    reader, writer = await asyncio.open_connection(LO, port)
    writer.write(out.read())
    async with asyncio.timeout(GUARD_S):
        answer = await reader.read(4096)
    if reset:
        writer.transport.abort()
    else:
        writer.close()
    return answer


def test_a_client_closing_after_its_clienthello_was_answered_gave_up_and_did_not_fail(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """What a client sidecar does when the request took a pooled connection and the eager dial
    was dropped: counted as given up, no warning; a ClientHello cut short still fails."""
    caplog.set_level(logging.INFO, logger="meshns.dataplane.accept")
    ca = CertAuthority.init(tmp_path / "ca", "cluster.local", 3600)
    tls = MeshTls()
    tls.update(workload(ca, "server"))
    meshed = client_context(workload(ca, "client"))

    @uvloop_test
    async def run() -> None:
        app = RawApp()
        async with app_server(app.handle) as app_port, \
                listener("inbound", app_port, "auto", tls=tls, tls_handshake_timeout_s=5.0) as (side, port):
            for reset in (False, True):
                answer = await _hello_then_close(port, meshed, reset=reset)
                assert answer[:1] == b"\x16", answer[:8]  # a handshake record: the ServerHello
            await _raw(port, BAD.TLS_TRUNCATED, half_close=True)
            async with asyncio.timeout(GUARD_S):
                while side.stats.tls_handshake_abandoned + side.stats.tls_handshake_failures < 3:
                    await asyncio.sleep(0.01)
            assert (side.stats.tls_handshake_abandoned, side.stats.tls_handshake_failures) == (2, 1)
            assert await _tls(port, meshed) == "HTTP/1.1 200" and side.stats.tls_in == 1
            assert app.foreign() == []

    run()
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING and "mTLS" in r.getMessage()]
    assert len(warned) == 1 and "failed" in warned[0].getMessage()
    assert sum("closed mid-handshake" in r.getMessage() for r in caplog.records) == 2
