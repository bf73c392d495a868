"""Observability end to end on loopback: Istio metrics (outbound, inbound, TCP), the metrics
listener, admin additions, trace headers at the upstream, inbound HTTP handling, drain."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import h11
import pytest
from h2kit import BackendConn, H2Backend, H2Client, Request, h2_backends, send_illegal_response
from httpkit import IPS, LO, VIP, VPORT, Client, backends, free_port, service, sidecar, uvloop_test
from prometheus_client.parser import text_string_to_metric_families

from meshns.dataplane.addrs import ListenAddr, OrigDst
from meshns.dataplane.config import SidecarConfig
from meshns.dataplane.origdst import FixedResolver
from meshns.dataplane.server import Sidecar
from meshns.snapshot import Endpoint, OutlierDetection, Service, ServicePort, Snapshot


async def http_get(addr: ListenAddr | None, path: str, method: str = "GET") -> tuple[int, bytes]:
    assert addr is not None
    r, w = await asyncio.open_connection(addr.ip if addr.ip != "0.0.0.0" else LO, addr.port)
    w.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    data = await r.read()
    w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def samples(text: bytes, family: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            if s.name == family:
                out.append((s.labels, s.value))
    return out


@uvloop_test
async def test_outbound_http_metrics_traces_and_admin_docs() -> None:
    async with backends() as (port, bes), sidecar(service(port), metrics_port=0) as side:
        client = await Client.open(side)
        for i in range(6):
            reply = await client.request("GET", f"/r/{i}", headers=[("X-Keep", "Case")])
            assert reply.status == 200
        client.close()
        _, text = await http_get(side.admin_addr, "/stats/prometheus")
        reqs = samples(text, "istio_requests_total")
        assert sum(v for _, v in reqs) == 6
        assert {lab["destination_workload"]: v for lab, v in reqs} == {"pod0": 2, "pod1": 2, "pod2": 2}
        lab = reqs[0][0]
        assert (lab["reporter"], lab["source_workload"], lab["destination_service"], lab["response_code"],
                lab["response_flags"], lab["request_protocol"], lab["source_principal"],
                lab["connection_security_policy"], lab["grpc_response_status"]) == (
            "source", "client", "reviews", "200", "-", "http", "unknown", "unknown", "")
        counts = samples(text, "istio_request_duration_milliseconds_count")
        assert sum(v for _, v in counts) == 6
        assert sum(v for _, v in samples(text, "istio_response_bytes_count")) == 6
        assert samples(text, "meshns_config_version")[0][1] == 1
        # the metrics listener serves the same families
        status, text2 = await http_get(side.metrics_addr, "/stats/prometheus")
        assert status == 200 and sum(v for _, v in samples(text2, "istio_requests_total")) == 6
        assert (await http_get(side.metrics_addr, "/metrics"))[0] == 200
        assert (await http_get(side.metrics_addr, "/stats"))[0] == 404
        # trace headers as the upstream saw them: a new trace, a request id, other headers kept
        _, _, hs = bes[0].seen[0]
        names = [n for n, _ in hs]
        assert names[:2] == [b"Host", b"X-Keep"] and b"traceparent" in names and b"x-request-id" in names
        assert dict(hs)[b"X-Keep"] == b"Case"
        status, body = await http_get(side.admin_addr, "/config_dump")
        doc = json.loads(body)
        assert status == 200 and doc["version"] == 1 and doc["snapshot"]["services"][0]["name"] == "reviews"
        assert json.loads((await http_get(side.admin_addr, "/certs"))[1])["certificates"] == []


@uvloop_test
async def test_trace_context_propagated_with_new_span() -> None:
    async with backends(1) as (port, bes), sidecar(service(port, 1), metrics_port=0) as side:
        client = await Client.open(side)
        tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        await client.request("GET", "/", headers=[("traceparent", tp), ("X-B3-TraceId", "aa" * 8),
                                                   ("X-B3-SpanId", "bb" * 8), ("x-request-id", "abc")])
        client.close()
        hs = {n.decode().lower(): v.decode() for n, v in bes[0].seen[0][2]}
        assert hs["x-request-id"] == "abc"
        assert hs["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        assert hs["traceparent"].split("-")[2] != "00f067aa0ba902b7"
        assert hs["x-b3-parentspanid"] == "bb" * 8 and hs["x-b3-spanid"] != "bb" * 8


@uvloop_test
async def test_retries_ejections_and_clusters() -> None:
    async with backends(2) as (port, _bes):
        svc = service(port, 2, endpoints=(
            Endpoint("a", IPS[0]), Endpoint("b", IPS[1]), Endpoint("dead", "127.0.0.5")),
            outlier=OutlierDetection(consecutive_5xx=2, max_ejection_percent=50))
        async with sidecar(svc, metrics_port=0) as side:
            client = await Client.open(side)
            for _ in range(12):
                assert (await client.request("GET", "/")).status == 200
            client.close()
            _, text = await http_get(side.admin_addr, "/stats/prometheus")
            assert samples(text, "meshns_retries_total")[0][1] >= 2
            assert samples(text, "meshns_ejections_total") == [({"destination_service": "reviews"}, 1.0)]
            doc = json.loads((await http_get(side.admin_addr, "/clusters"))[1])
            eps = {e["pod"]: e for e in doc["services"]["reviews"]["endpoints"]}
            assert eps["dead"]["ejected"] is True and eps["dead"]["ejected_for_s"] > 0
            assert eps["a"]["health"] == "healthy"


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
    writer.close()


@uvloop_test
async def test_tcp_relay_metrics_and_access_log() -> None:
    lines: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Grab()
    access = logging.getLogger("meshns.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    srv = await asyncio.start_server(echo, IPS[0], 0)
    port = srv.sockets[0].getsockname()[1]
    cfg = SidecarConfig(pod="client", pod_ip=LO, outbound_port=0, inbound_port=0, admin_port=0, metrics_port=0,
                        probe_port=15002)
    side = Sidecar(cfg, resolver=FixedResolver(OrigDst(IPS[0], port)))
    side.store.set(Snapshot(version=2, pod="client", services=(
        Service("db", "10.96.0.9", (ServicePort(5432, port),), endpoints=(Endpoint("db-0", IPS[0]),)),)))
    await side.start()
    try:
        assert side.outbound_addr is not None
        for _ in range(2):
            r, w = await asyncio.open_connection(LO, side.outbound_addr.port)
            w.write(b"hello world!")
            assert await r.readexactly(12) == b"hello world!"
            w.close()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        _, text = await http_get(side.admin_addr, "/stats/prometheus")
        opened = samples(text, "istio_tcp_connections_opened_total")
        assert opened[0][1] == 2
        lab = opened[0][0]
        assert (lab["reporter"], lab["destination_workload"], lab["destination_service"],
                lab["request_protocol"]) == ("source", "db-0", "db", "tcp")
        assert samples(text, "istio_tcp_connections_closed_total")[0][1] == 2
        assert samples(text, "istio_tcp_received_bytes_total")[0][1] == 24
        assert samples(text, "istio_tcp_sent_bytes_total")[0][1] == 24
        tcp_lines = [json.loads(x) for x in lines if '"kind":"tcp"' in x]
        assert len(tcp_lines) == 2 and tcp_lines[0]["bytes_sent"] == 12
    finally:
        access.removeHandler(handler)
        await side.drain()
        srv.close()


@contextlib.asynccontextmanager
async def inbound_sidecar(app_port: int, **over: Any) -> AsyncIterator[Sidecar]:
    cfg: dict[str, Any] = {"pod": "server-0", "pod_ip": LO, "outbound_port": 0, "inbound_port": 0,
                           "admin_port": 0, "metrics_port": 0, "probe_port": 15002}
    cfg.update(over)
    side = Sidecar(SidecarConfig(**cfg), resolver=FixedResolver(OrigDst(IPS[0], app_port)),
                   rng=random.Random(3))
    side.store.set(Snapshot(version=5, pod="server-0", services=(
        Service("caller", "10.96.0.1", (ServicePort(80, 80),), endpoints=(Endpoint("caller-0", LO),)),
        Service("ratings", "10.96.0.2", (ServicePort(9080, app_port),), endpoints=(Endpoint("server-0", IPS[0]),)),
    )))
    await side.start()
    try:
        yield side
    finally:
        await side.drain()


async def inbound_client(side: Sidecar) -> Client:
    assert side.inbound_addr is not None
    r, w = await asyncio.open_connection(LO, side.inbound_addr.port)
    return Client(r, w)


@uvloop_test
async def test_inbound_http_keepalive_chunked_and_metrics() -> None:
    async with backends(1) as (port, bes), inbound_sidecar(port) as side:
        client = await inbound_client(side)
        for i in range(4):
            reply = await client.request("GET", f"/in/{i}")
            assert reply.status == 200 and reply.body.split()[2] == f"/in/{i}".encode()
        # chunked upload (h11 frames a body without length as chunked)
        client.writer.write(b"POST /up HTTP/1.1\r\nHost: ratings\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"5\r\nhello\r\n0\r\n\r\n")
        client.conn = h11.Connection(h11.CLIENT)
        client.conn.send(h11.Request(method="POST", target="/up", headers=[("Host", "r"), ("Transfer-Encoding", "chunked")]))
        client.conn.send(h11.EndOfMessage())
        reply = await client.read_response()
        assert reply.status == 200 and reply.body.split()[3] == b"5"
        client.close()
        assert bes[0].connections == 1  # one app connection, kept alive
        assert all(dict(h).get(b"x-request-id") for _, _, h in bes[0].seen)
        await asyncio.sleep(0.05)
        _, text = await http_get(side.metrics_addr, "/stats/prometheus")
        reqs = samples(text, "istio_requests_total")
        assert sum(v for _, v in reqs) == 5
        lab = reqs[0][0]
        assert (lab["reporter"], lab["source_workload"], lab["destination_workload"],
                lab["destination_service"]) == ("destination", "caller-0", "server-0", "ratings")


@uvloop_test
async def test_inbound_app_down_503_uf_and_tcp_fallback() -> None:
    port = free_port()
    async with inbound_sidecar(port) as side:
        client = await inbound_client(side)
        reply = await client.request("GET", "/")
        assert reply.status == 503 and reply.headers["x-meshns-response-flags"] == "UF"
        client.close()
        _, text = await http_get(side.admin_addr, "/stats/prometheus")
        [(lab, v)] = samples(text, "istio_requests_total")
        assert (lab["response_code"], lab["response_flags"], v) == ("503", "UF", 1)
    # non-HTTP inbound: a byte pipe with TCP metrics
    srv = await asyncio.start_server(echo, IPS[0], 0)
    async with inbound_sidecar(srv.sockets[0].getsockname()[1]) as side:
        assert side.inbound_addr is not None
        r, w = await asyncio.open_connection(LO, side.inbound_addr.port)
        w.write(b"\x00\x01binary")
        assert await r.readexactly(8) == b"\x00\x01binary"
        w.close()
        await asyncio.sleep(0.1)
        _, text = await http_get(side.admin_addr, "/stats/prometheus")
        assert samples(text, "istio_tcp_received_bytes_total")[0][1] == 8
        assert samples(text, "istio_tcp_connections_opened_total")[0][0]["reporter"] == "destination"
    srv.close()


@pytest.mark.parametrize("parser", ["h11", "httptools"])
@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\nraw",  # nobody asked
    b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"SSH-2.0-OpenSSH_9.2\r\n",  # not HTTP at all
])
def test_inbound_app_answering_with_something_not_http_is_a_502_upe(parser: str, answer: bytes) -> None:
    # Envoy (since 1.18) answers an upstream protocol error with 502 and the UPE flag, where a
    # closed or reset app is 503 UC; the client never sees the app's bytes.
    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        with contextlib.suppress(ConnectionError):
            await reader.read()  # the sidecar closes this connection
        writer.close()

    @uvloop_test
    async def run() -> None:
        srv = await asyncio.start_server(app, IPS[0], 0)
        async with inbound_sidecar(srv.sockets[0].getsockname()[1], http_parser=parser) as side:
            client = await inbound_client(side)
            reply = await client.request("GET", "/")
            assert (reply.status, reply.headers["x-meshns-response-flags"]) == (502, "UPE")
            assert b"raw" not in reply.body and b"SSH" not in reply.body
            client.close()
            _, text = await http_get(side.admin_addr, "/stats/prometheus")
            [(lab, v)] = samples(text, "istio_requests_total")
            assert (lab["response_code"], lab["response_flags"], v) == ("502", "UPE", 1)
        srv.close()

    run()


@uvloop_test
async def test_inbound_h2_app_that_breaks_http2_is_a_502_upe() -> None:
    # The HTTP/2 counterpart: the app's response carries a connection-specific field, which h2
    # refuses (GOAWAY); the caller gets Envoy's answer to an upstream protocol error.
    async def broken(be: H2Backend, conn: BackendConn, req: Request) -> None:
        send_illegal_response(conn, req.stream_id)

    async with h2_backends(broken, n=1) as (port, _), inbound_sidecar(port) as side:
        assert side.inbound_addr is not None
        client = await H2Client.open(LO, side.inbound_addr.port)
        reply = await client.get("/")
        assert (reply.headers[b":status"], reply.headers[b"x-meshns-response-flags"]) == (b"502", b"UPE")
        client.close()
        _, text = await http_get(side.admin_addr, "/stats/prometheus")
        [(lab, v)] = samples(text, "istio_requests_total")
        assert (lab["response_code"], lab["response_flags"], v) == ("502", "UPE", 1)


@uvloop_test
async def test_inbound_upgrade_becomes_a_pipe() -> None:
    async def upgrader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        await echo(reader, writer)

    srv = await asyncio.start_server(upgrader, IPS[0], 0)
    async with inbound_sidecar(srv.sockets[0].getsockname()[1]) as side:
        assert side.inbound_addr is not None
        r, w = await asyncio.open_connection(LO, side.inbound_addr.port)
        w.write(b"GET /ws HTTP/1.1\r\nHost: r\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        head = await r.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        w.write(b"ping")
        assert await r.readexactly(4) == b"ping"
        w.close()
    srv.close()


@uvloop_test
async def test_logging_endpoint_changes_level() -> None:
    async with backends(1) as (port, _), sidecar(service(port, 1), metrics_port=-1) as side:
        assert side.metrics_addr is None
        status, _ = await http_get(side.admin_addr, "/logging?logger=meshns.dataplane.relay&level=debug", "POST")
        assert status == 200
        assert logging.getLogger("meshns.dataplane.relay").level == logging.DEBUG
        doc = json.loads((await http_get(side.admin_addr, "/logging"))[1])
        assert doc["loggers"]["meshns.dataplane.relay"] == "debug"
        logging.getLogger("meshns.dataplane.relay").setLevel(logging.NOTSET)


@uvloop_test
async def test_post_drain_finishes_inflight_request_then_stops() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.5)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
        await writer.drain()
        await reader.read()
        writer.close()

    srv = await asyncio.start_server(slow, IPS[0], 0)
    port = srv.sockets[0].getsockname()[1]
    cfg = SidecarConfig(pod="client", pod_ip=LO, outbound_port=0, inbound_port=0, admin_port=0, metrics_port=0,
                        probe_port=15002, drain_timeout_s=3)
    side = Sidecar(cfg, resolver=FixedResolver(OrigDst(VIP, VPORT)))
    side.store.set(Snapshot(version=1, pod="client", services=(service(port, 1),)))
    await side.start()
    serving = asyncio.ensure_future(side.serve())
    client = await Client.open(side)
    pending = asyncio.ensure_future(client.request("GET", "/slow"))
    await asyncio.sleep(0.1)
    status, _ = await http_get(side.admin_addr, "/drain", "POST")
    assert status == 200
    assert not side.ready
    reply = await pending
    assert reply.status == 200 and reply.body == b"slow"
    assert await asyncio.wait_for(serving, 5) == 0
    assert side.stats.active == 0
    client.close()
    srv.close()
