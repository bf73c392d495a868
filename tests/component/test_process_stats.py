"""The process section of /stats and the process gauges of /stats/prometheus, on a real sidecar
in-process: descriptors and tasks follow the connections it relays, and come back when they close
(the same leak check the load and soak tests make on real pods, at a size a unit run affords)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from httpkit import uvloop_test
from prometheus_client.parser import text_string_to_metric_families

from meshns.dataplane.addrs import ListenAddr, OrigDst
from meshns.dataplane.config import SidecarConfig
from meshns.dataplane.origdst import FixedResolver
from meshns.dataplane.server import Sidecar

LO = "127.0.0.1"
CONNS = 150


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def get(addr: ListenAddr | None, path: str) -> bytes:
    assert addr is not None
    reader, writer = await asyncio.open_connection(LO, addr.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


async def process(side: Sidecar) -> dict[str, Any]:
    doc = json.loads(await get(side.admin_addr, "/stats"))["process"]
    assert isinstance(doc, dict)
    return doc


@contextlib.asynccontextmanager
async def relaying() -> AsyncIterator[Sidecar]:
    server = await asyncio.start_server(echo, LO, 0)
    target = OrigDst(LO, server.sockets[0].getsockname()[1])
    config = SidecarConfig(pod="proc-pod", pod_ip=LO, outbound_port=0, inbound_port=0, admin_port=0,
                           probe_port=15002, metrics_port=0)
    side = Sidecar(config, resolver=FixedResolver(target))
    await side.start()
    try:
        yield side
    finally:
        await side.drain()
        server.close()


async def settle(side: Sidecar, base: dict[str, Any]) -> dict[str, Any]:
    """/stats once the closed connections are gone on every side (the echo server's too)."""
    doc = await process(side)
    for _ in range(200):
        if doc["connections_active"] == 0 and doc["open_fds"] <= base["open_fds"]:
            break
        await asyncio.sleep(0.02)
        doc = await process(side)
    return doc


@uvloop_test
async def test_fds_and_tasks_follow_connections_and_come_back() -> None:
    async with relaying() as side:
        base = await process(side)
        assert base["connections_active"] == 0 and base["open_fds"] > 0 and base["asyncio_tasks"] >= 1
        conns = [await asyncio.open_connection(LO, side.outbound_addr.port)  # type: ignore[union-attr]
                 for _ in range(CONNS)]
        for i, (_, writer) in enumerate(conns):
            writer.write(b"%d\n" % i)
        for i, (reader, _) in enumerate(conns):
            assert await reader.readline() == b"%d\n" % i
        held = await process(side)
        # This process holds all three sockets of each connection: ours, the sidecar's two
        # (accepted, dialled) and the echo server's: four descriptors per connection.
        assert held["connections_active"] == CONNS
        assert held["open_fds"] >= base["open_fds"] + 4 * CONNS
        assert held["rss_bytes"] >= base["rss_bytes"] // 2  # sane, not a leak bound
        text = (await get(side.metrics_addr, "/stats/prometheus")).decode()
        gauges = {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples}
        assert gauges["process_open_fds"] >= base["open_fds"] + 4 * CONNS
        assert gauges["process_resident_memory_bytes"] > 0
        assert gauges["meshns_connections_active"] == CONNS
        assert gauges["meshns_asyncio_tasks"] >= 1
        for _, writer in conns:
            writer.close()
        after = await settle(side, base)
        assert after["connections_active"] == 0
        assert after["open_fds"] <= base["open_fds"] + 2
        assert after["asyncio_tasks"] <= base["asyncio_tasks"] + 1

