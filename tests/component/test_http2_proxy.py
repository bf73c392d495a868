"""The HTTP/2 data path: sidecar in-process, raw h2 backends on 127.0.0.2-4, a raw h2 client, so
windows, resets, trailers and GOAWAYs are driven frame by frame."""

from __future__ import annotations

import asyncio
import collections

from h2kit import H2Backend, H2Client, Request, answer_name, h2_backends, send_illegal_response
from httpkit import LO, service, sidecar, uvloop_test

from meshns.dataplane.http2.conn import STREAM_WINDOW
from meshns.snapshot import HttpRoute, RetryPolicy

GRPC = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]


async def client_for(side: object) -> H2Client:
    return await H2Client.open(LO, side.outbound_addr.port)  # type: ignore[attr-defined]


@uvloop_test
async def test_streams_of_one_connection_are_balanced_over_every_endpoint() -> None:
    async with h2_backends() as (port, bes), sidecar(service(port)) as side:
        client = await client_for(side)
        seen = collections.Counter()
        replies = await asyncio.gather(*(client.get(f"/r/{i}") for i in range(30)))
        for r in replies:
            assert r.headers[b":status"] == b"200"
            seen[bytes(r.body)] += 1
        assert seen == {b"127.0.0.2": 10, b"127.0.0.3": 10, b"127.0.0.4": 10}
        assert [b.connections for b in bes] == [1, 1, 1]  # multiplexed: one upstream connection each
        assert side.stats.h2_connections == 1
        client.close()


async def big_then_small(be: H2Backend, conn: object, req: Request) -> None:
    sid = req.stream_id
    conn.h2.send_headers(sid, [(b":status", b"200")])  # type: ignore[attr-defined]
    size = 4 * 1024 * 1024 if req.headers[b":path"] == b"/big" else 1000
    await conn.send_body(sid, b"x" * size)  # type: ignore[attr-defined]


@uvloop_test
async def test_a_stalled_stream_neither_stalls_the_others_nor_grows_memory() -> None:
    async with h2_backends(big_then_small, n=1) as (port, _), sidecar(service(port, n=1)) as side:
        client = await client_for(side)
        sid, big = client.request("/big", ack=False)  # the reader of this stream stopped
        await asyncio.sleep(0.3)
        small = await asyncio.wait_for(asyncio.gather(*(client.get("/small") for _ in range(20))), 10)
        assert all(len(r.body) == 1000 for r in small)
        held = side.http.buffered_bytes()
        # What the sidecar holds for the stalled stream is bounded by one stream window on each side.
        assert held <= 2 * STREAM_WINDOW + 64 * 1024, held
        assert len(big.body) <= STREAM_WINDOW
        client.ack_all(sid)
        while not big.done.is_set():
            client.ack_all(sid)
            await asyncio.sleep(0.01)
        assert len(big.body) == 4 * 1024 * 1024 and big.reset is None
        client.close()


def grpc_flaky(fails: dict[str, int]) -> object:
    async def handler(be: H2Backend, conn: object, req: Request) -> None:
        sid = req.stream_id
        h2c = conn.h2  # type: ignore[attr-defined]
        if fails.get(be.ip, 0) > 0:
            fails[be.ip] -= 1
            h2c.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
            conn.flush()  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)  # headers first, then a status-only trailer: no message
            h2c.send_headers(sid, [(b"grpc-status", b"14"), (b"grpc-message", b"down")], end_stream=True)
            conn.flush()  # type: ignore[attr-defined]
            return
        h2c.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
        await conn.send_body(sid, b"\x00\x00\x00\x00\x02hi", trailers=[(b"grpc-status", b"0")])  # type: ignore[attr-defined]
    return handler


@uvloop_test
async def test_grpc_unavailable_in_trailers_without_a_message_is_retried() -> None:
    fails = {"127.0.0.2": 100}
    async with h2_backends(grpc_flaky(fails), n=2) as (port, bes), sidecar(service(port, n=2)) as side:
        client = await client_for(side)
        for _ in range(6):
            r = await client.get("/pkg.Svc/Call", GRPC, body=b"\x00\x00\x00\x00\x00")
            assert r.trailers[b"grpc-status"] == b"0", r
            assert bytes(r.body) == b"\x00\x00\x00\x00\x02hi"
        assert side.http.services_doc()["reviews"]["retries"] >= 1
        assert bes[1].requests == 6
        client.close()


@uvloop_test
async def test_sidecar_errors_to_grpc_calls_are_grpc_statuses() -> None:
    async with sidecar(service(1, n=1, endpoints=())) as side:
        client = await client_for(side)
        r = await client.get("/pkg.Svc/Call", GRPC, body=b"\x00\x00\x00\x00\x00")
        assert r.headers[b":status"] == b"200"
        assert r.headers[b"grpc-status"] == b"14"
        assert r.headers[b"grpc-message"].startswith(b"meshns: no healthy upstream")
        plain = await client.get("/")
        assert plain.headers[b":status"] == b"503" and b"no healthy upstream" in plain.body
        client.close()


async def broken_on_x(be: H2Backend, conn: object, req: Request) -> None:
    if req.headers[b":path"] == b"/x":
        send_illegal_response(conn, req.stream_id)  # type: ignore[arg-type]
    else:
        await answer_name(be, conn, req)  # type: ignore[arg-type]


@uvloop_test
async def test_an_upstream_that_breaks_http2_is_a_502_upe_and_grpc_unavailable() -> None:
    # Envoy answers an upstream protocol error with 502 and flag UPE (503 UC is a reset or a
    # close); a gRPC call gets UNAVAILABLE naming it. The broken connection is not used again.
    async with h2_backends(broken_on_x, n=1) as (port, bes), sidecar(service(port, n=1)) as side:
        client = await client_for(side)
        plain = await client.get("/x")
        assert plain.headers[b":status"] == b"502", plain.headers
        assert plain.headers[b"x-meshns-response-flags"] == b"UPE" and b"upstream protocol error" in plain.body
        call = await client.get("/x", GRPC, body=b"\x00\x00\x00\x00\x00")
        assert (call.headers[b":status"], call.headers[b"grpc-status"]) == (b"200", b"14")
        assert call.headers[b"grpc-message"].startswith(b"meshns: upstream protocol error")
        fine = await client.get("/")
        assert fine.headers[b":status"] == b"200"
        client.close()
        assert bes[0].connections == 3  # each broken one was closed


async def hang_on_x(be: H2Backend, conn: object, req: Request) -> None:
    if req.headers[b":path"] == b"/x":
        await asyncio.sleep(30)
    else:
        await answer_name(be, conn, req)  # type: ignore[arg-type]


@uvloop_test
async def test_grpc_timeout_is_honoured_and_capped_by_the_route_timeout() -> None:
    seen: list[bytes] = []

    async def record(be: H2Backend, conn: object, req: Request) -> None:
        seen.append(req.headers.get(b"grpc-timeout", b""))
        await asyncio.sleep(30)

    route = HttpRoute(timeout_s=0.3, retries=RetryPolicy(attempts=0))
    async with h2_backends(record, n=1) as (port, _), sidecar(service(port, n=1, routes=(route,))) as side:
        client = await client_for(side)
        r = await client.get("/pkg.Svc/Call", [*GRPC, (b"grpc-timeout", b"10S")], body=b"\x00\x00\x00\x00\x00")
        assert r.headers[b"grpc-status"] == b"4"  # DEADLINE_EXCEEDED, made by the sidecar
        assert b"UT" in r.headers[b"x-meshns-response-flags"]
        r = await client.get("/pkg.Svc/Call", [*GRPC, (b"grpc-timeout", b"100m")], body=b"\x00\x00\x00\x00\x00")
        assert r.headers[b"grpc-status"] == b"4"
        # Upstream saw the capped deadline (at most the route's 0.3 s), then the client's own 0.1 s.
        assert seen[0].endswith(b"u") or seen[0].endswith(b"m") or seen[0].endswith(b"n")
        client.close()


async def goaway_midway(be: H2Backend, conn: object, req: Request) -> None:
    sid = req.stream_id
    h2c = conn.h2  # type: ignore[attr-defined]
    h2c.send_headers(sid, [(b":status", b"200")])
    from hyperframe.frame import GoAwayFrame
    frame = GoAwayFrame(0)
    frame.last_stream_id = sid
    conn.flush()  # type: ignore[attr-defined]
    conn.transport.write(frame.serialize())  # type: ignore[attr-defined]  # graceful: NO_ERROR
    await asyncio.sleep(0.05)
    await conn.send_body(sid, b"after goaway")  # type: ignore[attr-defined]


@uvloop_test
async def test_a_draining_upstream_finishes_its_streams_and_gets_no_new_ones() -> None:
    async with h2_backends(goaway_midway, n=1) as (port, bes), sidecar(service(port, n=1)) as side:
        client = await client_for(side)
        first = await client.get("/1")
        assert bytes(first.body) == b"after goaway" and first.reset is None
        second = await client.get("/2")
        assert bytes(second.body) == b"after goaway"
        assert bes[0].connections == 2  # the second stream went on a new connection
        client.close()


@uvloop_test
async def test_rapid_reset_gets_goaway_while_another_client_is_served() -> None:
    async with h2_backends(hang_on_x, n=1) as (port, _), sidecar(service(port, n=1)) as side:
        attacker = await client_for(side)
        good = await client_for(side)
        for _ in range(300):
            if attacker.goaway is not None or attacker.lost.is_set():
                break
            sid, _ = attacker.request("/x")
            attacker.h2.reset_stream(sid, 8)
            attacker.flush()
            await asyncio.sleep(0)
        await asyncio.wait_for(attacker.lost.wait(), 5)
        assert attacker.goaway == 0xB  # ENHANCE_YOUR_CALM
        assert side.stats.h2_floods == 1
        r = await asyncio.wait_for(good.get("/y"), 5)  # the other client is served as before
        assert r.headers[b":status"] == b"200" and bytes(r.body) == b"127.0.0.2"
        good.close()


@uvloop_test
async def test_header_routes_splits_and_faults_apply_per_stream() -> None:
    from meshns.snapshot import FaultPolicy, HeaderMatch, RouteMatch, StringMatch, Subset, WeightedDestination
    subsets = (Subset("v1", (("version", "v1"),)), Subset("v2", (("version", "v2"),)),
               Subset("v3", (("version", "v3"),)))
    jason = HttpRoute(name="jason", matches=(RouteMatch(headers=(HeaderMatch("end-user", StringMatch("exact", "jason")),)),),
                      destinations=(WeightedDestination("v3"),))
    broken = HttpRoute(name="broken", matches=(RouteMatch(uri=StringMatch("prefix", "/pkg.Broken/")),),
                       fault=FaultPolicy(abort_status=503, abort_percent=100))
    split = HttpRoute(name="split", destinations=(WeightedDestination("v1", 80), WeightedDestination("v2", 20)))
    svc = service(1, subsets=subsets, routes=(jason, broken, split))
    async with h2_backends() as (port, bes), sidecar(service(port, subsets=subsets, routes=svc.routes)) as side:
        client = await client_for(side)
        jasons = await asyncio.gather(*(client.get("/", [(b"end-user", b"jason")]) for _ in range(5)))
        assert {bytes(r.body) for r in jasons} == {b"127.0.0.4"}
        hits = collections.Counter()
        for _ in range(5):  # 80 streams at a time: within the sidecar's 100 concurrent streams
            hits.update(bytes(r.body) for r in await asyncio.gather(*(client.get("/") for _ in range(80))))
        assert hits[b"127.0.0.4"] == 0 and 280 <= hits[b"127.0.0.2"] <= 360, hits
        faulted = await client.get("/pkg.Broken/Call", GRPC, body=b"\x00\x00\x00\x00\x00")
        assert faulted.headers[b"grpc-status"] == b"14" and faulted.headers[b"x-meshns-response-flags"] == b"FI"
        assert sum(b.requests for b in bes) == 405  # the faulted call reached no backend
        client.close()


@uvloop_test
async def test_clients_leaving_mid_response_do_not_use_up_the_shared_upstream_window() -> None:
    # Each client stops reading a 4 MiB response, then disconnects. What the sidecar held for it
    # must be given back to the (shared, long-lived) upstream connection, or after about a
    # hundred such clients that connection's window is gone and every later response stalls.
    async with h2_backends(big_then_small, n=1) as (port, bes), sidecar(service(port, n=1)) as side:
        for _ in range(110):
            client = await client_for(side)
            _, big = client.request("/big", ack=False)
            while len(big.body) < 60_000:
                await asyncio.sleep(0.005)
            client.transport.abort()
        client = await client_for(side)
        r = await asyncio.wait_for(client.get("/small"), 5)
        assert len(r.body) == 1000
        assert bes[0].connections == 1  # all of it over the one upstream connection
        client.close()
