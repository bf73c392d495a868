"""Prometheus metrics of one sidecar: Istio's standard request and TCP metrics plus the sidecar's
own health, in a registry of its own (tests run several sidecars in one process).

Hot-path cost is kept to one dict lookup and a few in-place adds per request. The request metrics
are series objects (``HttpSeries``) cached per label-value tuple and holding plain ints (count,
per-bucket counts found by bisect, sums); TCP connections are counted the same way (``TcpChildren``,
plain ints per label-value tuple; the byte counts are plain ints on the connection, ``TcpObs``,
moved into the children in deltas when the connection closes and at each scrape, so the byte path
never touches a lock). prometheus_client's own Histogram.observe (a lock and a Python loop over the
bounds, three histograms per request) cost about a quarter of the outbound request rate in one
(noisy) run of a small-GET loop; the plain-int series are within noise.

This module does not import prometheus_client: the text is made per scrape, never ahead, by
``meshns.dataplane.exposition`` (the collectors that turn these numbers into Prometheus families,
and the registry), which is imported at the first scrape. prometheus_client's import (with its
exposition stack: http.server, wsgiref, urllib) was about a third of the sidecar's imports, and a
pod being created waits for those; a sidecar nobody scrapes never pays for it. ``main`` checks at
start that the package is installed, so a missing one fails the pod's start, not its first scrape.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from meshns.dataplane.labels import HttpLabels, Peers, TcpLabels

# Istio's default buckets (milliseconds, and bytes).
DURATION_BUCKETS_MS: Final = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
                              60000, 300000, 600000, 1800000, 3600000)
BYTES_BUCKETS: Final = (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000)
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
# le semantics: a value equal to a bound falls in that bound's bucket.
_bisect = bisect.bisect_left


class HttpSeries:
    """The request metrics of one label-value tuple. Buckets are per-bound (not cumulative) with
    one extra slot for +Inf; the scrape makes them cumulative."""

    __slots__ = ("duration", "duration_sum", "request_bytes", "request_bytes_sum", "requests",
                 "response_bytes", "response_bytes_sum")

    def __init__(self) -> None:
        self.requests = 0
        self.duration = [0] * (len(DURATION_BUCKETS_MS) + 1)
        self.duration_sum = 0.0
        self.request_bytes = [0] * (len(BYTES_BUCKETS) + 1)
        self.request_bytes_sum = 0
        self.response_bytes = [0] * (len(BYTES_BUCKETS) + 1)
        self.response_bytes_sum = 0


class TcpChildren:
    """The TCP counters of one label-value tuple (what prometheus_client's labelled Counter
    children held before): plain numbers, and when the tuple was first seen, which the scrape
    reports as the counters' ``_created`` samples, as Counter does."""

    __slots__ = ("closed", "created", "opened", "received", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.opened = 0
        self.closed = 0
        self.created = time.time()


class TcpObs:
    """One observed TCP connection: bytes counted in place by the pump, reported in deltas.
    ``received`` is client -> upstream, ``sent`` upstream -> client (Istio's meaning)."""

    __slots__ = ("children", "client", "dst_workload", "peers", "received", "reported_received",
                 "reported_sent", "sent", "t0", "upstream")

    def __init__(self, children: TcpChildren | None, peers: Peers, dst_workload: str, client: str,
                 upstream: str) -> None:
        self.children = children
        self.peers = peers
        self.dst_workload = dst_workload
        self.client = client
        self.upstream = upstream
        self.received = 0
        self.sent = 0
        self.reported_received = 0
        self.reported_sent = 0
        self.t0 = time.perf_counter()

    def flush(self) -> None:
        ch = self.children
        if ch is None:
            return
        if self.received != self.reported_received:
            ch.received += self.received - self.reported_received
            self.reported_received = self.received
        if self.sent != self.reported_sent:
            ch.sent += self.sent - self.reported_sent
            self.reported_sent = self.sent


@dataclass
class Health:
    """What the health collector reads per scrape."""

    config_version: int
    snapshot_reloads: int
    connections_active: int
    # destination_service -> (retries, ejections, breaker overflows, retry budget exhausted)
    services: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)


class Metrics:
    """The numbers the data path keeps. ``health``: read at each scrape; ``process``: the
    process, platform and GC collectors of prometheus_client; ``tasks``: the event loop's tasks
    (``meshns_asyncio_tasks``)."""

    def __init__(self, health: Callable[[], Health] | None = None, *, process: bool = True,
                 tasks: bool = False) -> None:
        self.health = health
        self.process = process
        self.tasks = tasks
        self.http: dict[HttpLabels, HttpSeries] = {}
        self.refused: dict[tuple[str, int], int] = {}
        self.tcp: dict[TcpLabels, TcpChildren] = {}
        self.tcp_live: set[TcpObs] = set()
        self._scrape: Callable[[], bytes] | None = None

    def http_series(self, labels: HttpLabels) -> HttpSeries:
        s = self.http.get(labels)
        if s is None:
            s = self.http[labels] = HttpSeries()
        return s

    def observe_http(self, labels: HttpLabels, duration_ms: float, request_bytes: int,
                     response_bytes: int) -> None:
        s = self.http.get(labels)
        if s is None:
            s = self.http[labels] = HttpSeries()
        s.requests += 1
        s.duration[_bisect(DURATION_BUCKETS_MS, duration_ms)] += 1
        s.duration_sum += duration_ms
        s.request_bytes[_bisect(BYTES_BUCKETS, request_bytes)] += 1
        s.request_bytes_sum += request_bytes
        s.response_bytes[_bisect(BYTES_BUCKETS, response_bytes)] += 1
        s.response_bytes_sum += response_bytes

    def bad_request(self, listener: str, code: int) -> None:
        key = (listener, code)
        self.refused[key] = self.refused.get(key, 0) + 1

    def tcp_children(self, labels: TcpLabels) -> TcpChildren:
        ch = self.tcp.get(labels)
        if ch is None:
            ch = self.tcp[labels] = TcpChildren()
        return ch

    def tcp_open(self, obs: TcpObs) -> None:
        if obs.children is not None:
            obs.children.opened += 1
            self.tcp_live.add(obs)

    def tcp_close(self, obs: TcpObs) -> None:
        obs.flush()
        if obs.children is not None:
            obs.children.closed += 1
            self.tcp_live.discard(obs)

    def flush_live(self) -> None:
        for obs in self.tcp_live:
            obs.flush()

    def exposition(self) -> bytes:
        """The Prometheus text of every metric now (the registry is made at the first call)."""
        self.flush_live()
        if self._scrape is None:
            from meshns.dataplane import exposition  # noqa: PLC0415 - prometheus_client, at the first scrape

            self._scrape = exposition.scraper(self)
        return self._scrape()
