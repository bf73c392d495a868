"""The admin endpoint's routing, without sockets."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from meshns.dataplane.admin import AdminState, parse_proc_status, process_section, route
from meshns.dataplane.exposition import TasksCollector
from meshns.dataplane.stats import Stats


def state(**kw: bool) -> AdminState:
    return AdminState("web-1", Stats(), **kw)


def test_ready_follows_state() -> None:
    assert route(b"GET", b"/ready", state()) == (503, "text/plain", b"not ready\n")
    assert route(b"GET", b"/ready", state(ready=True)) == (200, "text/plain", b"ready\n")
    assert route(b"GET", b"/ready", state(ready=True, draining=True)) == (503, "text/plain", b"draining\n")


def test_stats_document() -> None:
    s = state(ready=True)
    s.stats.outbound.accepted = 2
    s.stats.connect_failures = 1
    status, ctype, body = route(b"GET", b"/stats?x=1", s)
    assert (status, ctype) == (200, "application/json")
    doc = json.loads(body)
    assert doc["outbound"] == {"accepted": 2, "bytes_up": 0, "bytes_down": 0}
    assert doc["connect_failures"] == 1
    assert doc["pod"] == "web-1" and doc["ready"] is True and isinstance(doc["pid"], int)


def test_unknown_and_wrong_method() -> None:
    assert route(b"GET", b"/", state())[0] == 404
    assert route(b"GET", b"/stats/prometheus", state())[0] == 404
    assert route(b"POST", b"/ready", state())[0] == 405
    assert route(b"DELETE", b"/x", state())[0] == 404


# The process section of /stats: descriptors, memory, tasks (leak checks read it).

STATUS_SAMPLE = """Name:\tpython3
Umask:\t0022
State:\tS (sleeping)
VmPeak:\t  400000 kB
VmHWM:\t   52000 kB
VmRSS:\t   48128 kB
RssAnon:\t   30000 kB
Threads:\t3
"""


@pytest.mark.parametrize(("text", "want"), [
    (STATUS_SAMPLE, {"rss_bytes": 48128 * 1024, "rss_peak_bytes": 52000 * 1024, "threads": 3}),
    ("VmRSS:\t1 kB\n", {"rss_bytes": 1024}),
    # a kernel thread has no Vm* lines; garbage and lines without a colon are skipped
    ("Name:\tkthreadd\nThreads:\t1\n", {"threads": 1}),
    ("VmRSS:\tlots kB\nnot a field\nThreads:\n", {}),
    ("", {}),
])
def test_parse_proc_status(text: str, want: dict[str, int]) -> None:
    assert parse_proc_status(text) == want


def test_process_section_reads_the_given_files(tmp_path: Path) -> None:
    fds = tmp_path / "fd"
    fds.mkdir()
    for i in range(7):
        (fds / str(i)).touch()
    status = tmp_path / "status"
    status.write_text(STATUS_SAMPLE)
    doc = process_section(5, str(status), str(fds))
    assert doc["open_fds"] == 7 and doc["connections_active"] == 5
    assert doc["rss_bytes"] == 48128 * 1024 and doc["threads"] == 3
    assert doc["asyncio_tasks"] is None  # no running loop here
    assert isinstance(doc["max_fds"], int) and doc["max_fds"] > 0
    # unreadable files: the section is still there, with what could be read
    missing = process_section(0, str(tmp_path / "nope"), str(tmp_path / "nope"))
    assert missing["open_fds"] is None and "rss_bytes" not in missing


def test_stats_document_has_this_process_figures() -> None:
    s = state(ready=True)
    s.stats.active = 3
    before = len(os.listdir("/proc/self/fd"))
    held = [os.open("/dev/null", os.O_RDONLY) for _ in range(20)]
    try:
        proc = json.loads(route(b"GET", b"/stats", s)[2])["process"]
    finally:
        for fd in held:
            os.close(fd)
    assert proc["connections_active"] == 3
    # the 20 descriptors held show (give or take the listing's own and the test runner's churn)
    assert before + 18 <= proc["open_fds"] <= before + 25
    assert proc["rss_bytes"] > 1 << 20 and proc["rss_peak_bytes"] >= proc["rss_bytes"]
    assert proc["threads"] >= 1


def test_tasks_counted_inside_a_loop() -> None:
    async def run() -> tuple[object, object]:
        s = state(ready=True)
        idle = [asyncio.ensure_future(asyncio.sleep(10)) for _ in range(4)]
        try:
            with_four = json.loads(route(b"GET", b"/stats", s)[2])["process"]["asyncio_tasks"]
        finally:
            for t in idle:
                t.cancel()
            await asyncio.gather(*idle, return_exceptions=True)
        after = json.loads(route(b"GET", b"/stats", s)[2])["process"]["asyncio_tasks"]
        return with_four, after

    with_four, after = asyncio.run(run())
    assert (with_four, after) == (5, 1)  # the four sleepers and run() itself; then run() alone


def test_tasks_gauge_in_prometheus_text() -> None:
    async def run() -> bytes:
        registry = CollectorRegistry()
        registry.register(TasksCollector())
        idle = [asyncio.ensure_future(asyncio.sleep(10)) for _ in range(2)]
        text = generate_latest(registry)
        for t in idle:
            t.cancel()
        await asyncio.gather(*idle, return_exceptions=True)
        return text

    assert b"meshns_asyncio_tasks 3.0" in asyncio.run(run())
    # outside a loop the gauge is left out rather than reported as 0
    registry = CollectorRegistry()
    registry.register(TasksCollector())
    assert b"meshns_asyncio_tasks" not in generate_latest(registry)
