"""The HTTP/1.1 data path end to end: sidecar in-process, test backends on 127.0.0.2-4."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable

import pytest
from httpkit import LO, Backend, Client, backends, raw_exchange, service, sidecar, uvloop_test

from meshns.snapshot import HttpRoute


@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_round_robin_per_request_over_one_keepalive_connection(parser: str) -> None:
    @uvloop_test
    async def run() -> None:
        async with backends() as (port, bes), sidecar(service(port), parser=parser) as side:
            client = await Client.open(side)
            seen = collections.Counter()
            for i in range(30):
                reply = await client.request("GET", f"/r/{i}")
                assert reply.status == 200
                assert reply.headers["x-meshns-attempts"] == "1"
                seen[reply.headers["x-backend"]] += 1
                assert reply.body.split()[2] == f"/r/{i}".encode()
            client.close()
            assert seen == {"127.0.0.2": 10, "127.0.0.3": 10, "127.0.0.4": 10}
            assert [b.requests for b in bes] == [10, 10, 10]
            # keep-alive upstream: one connection per endpoint (plus at most the eager one)
            assert all(b.connections <= 2 for b in bes), [b.connections for b in bes]
            assert side.stats.http_requests == 30
            assert side.http.services_doc()["reviews"]["requests"] == 30

    run()


@pytest.mark.parametrize("dial_delay_s", [0.0, 0.2])
def test_first_request_uses_the_eager_connection(dial_delay_s: float) -> None:
    # The eager dial (made at accept, for server-first protocols) is used by the first request,
    # also when it is still dialling as the request arrives (a slow mTLS handshake): never a
    # second connection while the eager one sits idle at the server, where it would block an
    # app serving one connection at a time (python's http.server).
    from meshns.dataplane.connect import tcp_connect
    from meshns.dataplane.decide import Forward

    async def slow_connect(factory: Callable[[], asyncio.Protocol], fwd: Forward) -> None:
        await asyncio.sleep(dial_delay_s)
        await tcp_connect(factory, fwd)

    @uvloop_test
    async def run() -> None:
        async with backends() as (port, bes), sidecar(service(port), connector=slow_connect) as side:
            for i in range(6):
                client = await Client.open(side)
                reply = await client.request("GET", f"/first/{i}")
                assert reply.status == 200
                client.close()
                if i == 0:  # nothing pooled yet: the eager dial carried the request, no second dial
                    assert sum(b.connections for b in bes) == 1
            await asyncio.sleep(dial_delay_s + 0.1)  # eager dials still in flight have completed
            assert sum(b.requests for b in bes) == 6
            # Later first requests may take an idle pooled connection while their eager dial is in
            # flight; that dial is then closed. Either way no connection is left open unused.
            assert [b.unused_open for b in bes] == [0, 0, 0], [b.unused_open for b in bes]

    run()


def test_a_new_connection_to_an_http_endpoint_with_an_idle_connection_dials_only_if_not_http() -> None:
    # An idle pooled connection shows the endpoint speaks HTTP: a new client connection waits a
    # moment (EAGER_GRACE_S) for its first bytes instead of dialling at once, and a request takes
    # the pooled connection (no mTLS handshake begun for nothing). Silence or bytes that are not
    # HTTP still get their dial: after the grace, or at once.
    from meshns.dataplane.connect import tcp_connect
    from meshns.dataplane.decide import Forward
    from meshns.dataplane.http1 import downstream

    dials = 0

    async def counting_connect(factory: Callable[[], asyncio.Protocol], fwd: Forward) -> None:
        nonlocal dials
        dials += 1
        await tcp_connect(factory, fwd)

    @uvloop_test
    async def run() -> None:
        async with backends(1) as (port, bes), sidecar(service(port, 1), connector=counting_connect) as side:
            for i in range(5):
                client = await Client.open(side)
                assert (await client.request("GET", f"/{i}")).status == 200
                client.close()
            await asyncio.sleep(0.05)
            assert dials == 1 and bes[0].connections == 1 and bes[0].requests == 5
            assert side.outbound_addr is not None
            _, writer = await asyncio.open_connection(LO, side.outbound_addr.port)  # says nothing
            await asyncio.sleep(downstream.EAGER_GRACE_S + 0.1)
            assert dials == 2  # dialled when the grace ended: a server-first banner would flow now
            writer.close()
            await raw_exchange(side, b"\x00not http\r\n\r\n", half_close=True)
            assert dials == 3 and bes[0].requests == 5

    run()


@uvloop_test
async def test_flaky_endpoint_hidden_by_retry() -> None:
    async with backends() as (port, bes), sidecar(service(port)) as side:
        bes[1].mode, bes[1].fail_left = "fail", 1  # one endpoint fails its first request
        client = await Client.open(side)
        attempts = []
        for _ in range(3):
            reply = await client.request("GET", "/flaky")
            assert reply.status == 200
            attempts.append(reply.headers["x-meshns-attempts"])
        assert sorted(attempts) == ["1", "1", "2"]
        assert side.http.services_doc()["reviews"]["retries"] == 1
        client.close()


@uvloop_test
async def test_retries_exhausted_forward_last_503_with_attempts() -> None:
    async with backends() as (port, bes), sidecar(service(port)) as side:
        for b in bes:
            b.mode, b.fail_left = "fail", 100
        client = await Client.open(side)
        reply = await client.request("GET", "/down")
        assert reply.status == 503
        assert reply.body == b"failing\n"
        assert reply.headers["x-meshns-attempts"] == "3"
        assert sum(b.requests for b in bes) == 3  # one try on each endpoint
        assert all(b.requests == 1 for b in bes)
        client.close()


@uvloop_test
async def test_dead_endpoint_retried_elsewhere_then_ejected() -> None:
    from meshns.snapshot import Endpoint, OutlierDetection
    async with backends(2) as (port, _bes):
        svc = service(port, 2, endpoints=(
            Endpoint("a", "127.0.0.2"), Endpoint("b", "127.0.0.3"), Endpoint("dead", "127.0.0.5")),
            outlier=OutlierDetection(consecutive_5xx=2, max_ejection_percent=50))
        async with sidecar(svc) as side:
            client = await Client.open(side)
            for _ in range(12):
                reply = await client.request("GET", "/")
                assert reply.status == 200
            state = side.http.pools["reviews"].state
            assert state.outlier.is_ejected("127.0.0.5", asyncio.get_running_loop().time())
            assert side.http.services_doc()["reviews"]["ejections"] == 1
            before = side.http.services_doc()["reviews"]["retries"]
            for _ in range(6):
                reply = await client.request("GET", "/")
                assert reply.headers["x-meshns-attempts"] == "1"
            assert side.http.services_doc()["reviews"]["retries"] == before
            client.close()


@uvloop_test
async def test_per_try_timeout_moves_to_another_endpoint() -> None:
    from meshns.snapshot import RetryPolicy
    async with backends() as (port, bes):
        bes[0].mode = "hang"
        route = HttpRoute(retries=RetryPolicy(attempts=2, per_try_timeout_s=0.2, retry_on=("5xx",)))
        async with sidecar(service(port, routes=(route,))) as side:
            client = await Client.open(side)
            hits = collections.Counter()
            for _ in range(3):
                reply = await client.request("GET", "/")
                assert reply.status == 200
                hits[reply.headers["x-backend"]] += 1
                assert reply.headers["x-meshns-attempts"] in ("1", "2")
            assert "127.0.0.2" not in hits
            assert side.http.services_doc()["reviews"]["timeouts"] >= 1
            client.close()


@uvloop_test
async def test_request_timeout_is_504_ut() -> None:
    async with backends() as (port, bes):
        for b in bes:
            b.mode = "hang"
        async with sidecar(service(port, routes=(HttpRoute(timeout_s=0.3),))) as side:
            client = await Client.open(side)
            t0 = asyncio.get_running_loop().time()
            reply = await client.request("GET", "/")
            assert reply.status == 504
            assert reply.headers["x-meshns-response-flags"] == "UT"
            assert asyncio.get_running_loop().time() - t0 < 2
            # the connection stays usable
            for b in bes:
                b.mode = "ok"
            assert (await client.request("GET", "/")).status == 200
            client.close()


@uvloop_test
async def test_no_route_404_nr_and_no_endpoints_503_uh() -> None:
    from meshns.snapshot import RouteMatch, StringMatch
    async with backends() as (port, _bes):
        only = HttpRoute(matches=(RouteMatch(uri=StringMatch("prefix", "/api")),))
        async with sidecar(service(port, routes=(only,))) as side:
            client = await Client.open(side)
            reply = await client.request("GET", "/other")
            assert reply.status == 404
            assert reply.headers["x-meshns-response-flags"] == "NR"
            assert (await client.request("GET", "/api/x")).status == 200
            client.close()
        async with sidecar(service(port, endpoints=())) as side:
            client = await Client.open(side)
            reply = await client.request("GET", "/")
            assert reply.status == 503
            assert reply.headers["x-meshns-response-flags"] == "UH"
            client.close()


@uvloop_test
async def test_overflow_503_uo_with_max_requests_1() -> None:
    from meshns.snapshot import ConnectionPool
    async with backends() as (port, bes):
        for b in bes:
            b.mode = "hang"
        async with sidecar(service(port, pool=ConnectionPool(max_requests=1))) as side:
            first = await Client.open(side)
            pending = asyncio.ensure_future(first.request("GET", "/slow"))
            await asyncio.sleep(0.2)
            second = await Client.open(side)
            reply = await second.request("GET", "/")
            assert reply.status == 503
            assert reply.headers["x-meshns-response-flags"] == "UO"
            assert side.http.services_doc()["reviews"]["overflows"] == 1
            pending.cancel()
            first.close()
            second.close()


@uvloop_test
async def test_fault_abort_and_delay() -> None:
    from meshns.snapshot import FaultPolicy
    async with backends() as (port, bes):
        abort = HttpRoute(fault=FaultPolicy(abort_status=418, abort_percent=100))
        async with sidecar(service(port, routes=(abort,))) as side:
            client = await Client.open(side)
            reply = await client.request("GET", "/")
            assert reply.status == 418
            assert reply.headers["x-meshns-response-flags"] == "FI"
            assert sum(b.requests for b in bes) == 0
            client.close()
        delay = HttpRoute(fault=FaultPolicy(delay_s=0.3, delay_percent=100))
        async with sidecar(service(port, routes=(delay,))) as side:
            client = await Client.open(side)
            reply = await client.request("GET", "/")
            assert reply.status == 200
            assert reply.headers["x-meshns-response-flags"] == "DI"  # delayed (by how much: not asserted)
            client.close()


@uvloop_test
async def test_header_routing_to_subset_and_weighted_split() -> None:
    from meshns.snapshot import HeaderMatch, RouteMatch, StringMatch, Subset, WeightedDestination
    subsets = (Subset("v1", (("version", "v1"),)), Subset("v2", (("version", "v2"),)),
               Subset("v3", (("version", "v3"),)))
    jason = HttpRoute(name="jason", matches=(RouteMatch(headers=(HeaderMatch("end-user", StringMatch("exact", "jason")),)),),
                      destinations=(WeightedDestination("v3"),))
    split = HttpRoute(name="split", destinations=(WeightedDestination("v1", 80), WeightedDestination("v2", 20)))
    async with backends() as (port, _bes), sidecar(service(port, subsets=subsets, routes=(jason, split))) as side:
        client = await Client.open(side)
        for _ in range(5):
            reply = await client.request("GET", "/", headers=[("End-User", "jason")])
            assert reply.headers["x-backend"] == "127.0.0.4"
        hits = collections.Counter()
        for _ in range(1000):
            hits[(await client.request("GET", "/")).headers["x-backend"]] += 1
        assert hits["127.0.0.4"] == 0
        assert 740 <= hits["127.0.0.2"] <= 860, hits
        client.close()


@uvloop_test
async def test_budget_stops_a_retry_storm() -> None:
    from meshns.snapshot import ConnectionPool
    async with backends() as (port, bes):
        for b in bes:
            b.mode, b.fail_left = "fail", 10**9
        async with sidecar(service(port, pool=ConnectionPool(max_connections=4096))) as side:
            peak_retries = 0

            async def watch() -> None:
                nonlocal peak_retries
                while True:
                    st = side.http.pools.get("reviews")
                    if st is not None:
                        s = st.state
                        peak_retries = max(peak_retries, s.active_retries)
                    await asyncio.sleep(0)

            watcher = asyncio.ensure_future(watch())
            clients = [await Client.open(side) for _ in range(50)]
            replies = await asyncio.gather(*(c.request("GET", "/") for c in clients))
            watcher.cancel()
            assert all(r.status == 503 for r in replies)
            total_tries = sum(b.requests for b in bes)
            assert total_tries < 50 * 3  # the budget refused many retries
            assert peak_retries <= max(3, 0.2 * 50), peak_retries
            for c in clients:
                c.close()


def scripted(answer: Callable[[bytes], bytes]) -> Callable[[Backend], Callable[..., Awaitable[None]]]:
    """A keep-alive backend that writes ``answer(request head)`` for each request, as one send."""
    def answering(be: Backend) -> Callable[..., Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            be.connections += 1
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    be.requests += 1
                    writer.write(answer(head))
            writer.close()
        return handle
    return answering


@pytest.mark.parametrize("parser", ["h11", "httptools"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_an_upstream_connection_that_sends_more_than_its_response_is_not_pooled(parser: str, method: str) -> None:
    # The upstream writes its answer and the start of a response nobody asked for in one send.
    # The answer stands; the connection is closed, not pooled, so the next request takes a new one.
    extra = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"
    body = b"" if method == "HEAD" else b"hi"
    answering = scripted(lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n" + body + extra)

    @uvloop_test
    async def run() -> None:
        async with backends(1, answering) as (port, bes), sidecar(service(port, 1), parser=parser) as side:
            client = await Client.open(side)
            for _ in range(2):
                reply = await client.request(method, "/")
                assert (reply.status, reply.body) == (200, body)
            client.close()
            assert bes[0].requests == 2
            assert bes[0].connections == 2  # one per request: the first was not pooled

    run()


@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_a_101_to_a_request_that_asked_for_no_upgrade_is_a_502_upe_and_no_tunnel(parser: str) -> None:
    # RFC 9110 15.2.2: a server switches protocols only when the request asked (Upgrade). llhttp
    # takes any 101 as an upgrade and h11 refuses it; either way the client gets Envoy's answer to
    # an upstream protocol error (502 UPE), never the 101 or the raw bytes behind it, and that
    # upstream connection is closed, not pooled. The default retryOn does not retry it.
    switch = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\nraw bytes"
    answering = scripted(lambda head: switch if head.startswith(b"GET /switch")
                         else b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    @uvloop_test
    async def run() -> None:
        async with backends(1, answering) as (port, bes), sidecar(service(port, 1), parser=parser) as side:
            client = await Client.open(side)
            reply = await client.request("GET", "/switch")
            assert (reply.status, reply.headers["x-meshns-response-flags"]) == (502, "UPE")
            assert reply.headers["x-meshns-attempts"] == "1"
            assert b"raw bytes" not in reply.body
            reply = await client.request("GET", "/plain")
            assert (reply.status, reply.body) == (200, b"ok")
            client.close()
            assert (bes[0].requests, bes[0].connections) == (2, 2)  # the one that sent a 101 was not reused

    run()
