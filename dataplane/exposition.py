"""The sidecar's Prometheus text: collectors that turn the numbers ``Metrics`` keeps into counter,
gauge and histogram families at scrape time, and the registry that holds them.

Imported at the first scrape (``Metrics.exposition``), not at start: this is the only module of
the sidecar that imports prometheus_client. The families, their order, names, help texts and
labels are what the sidecar served when the TCP counters were prometheus_client Counters
registered in this same order (tests/unit/test_obs_pure.py pins the text).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from meshns.dataplane.admin import running_tasks
from meshns.dataplane.labels import HTTP_LABELS, TCP_LABELS, HttpLabels, TcpLabels
from meshns.dataplane.metrics import BYTES_BUCKETS, DURATION_BUCKETS_MS, Health, HttpSeries, Metrics, TcpChildren

# prometheus_client's Counter leaves out its _created samples when this is set; the TCP counters
# below follow the same switch, read the same way (prometheus_client.metrics._use_created).
_USE_CREATED: Final = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False").lower() not in ("true", "1", "t")


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    out, total = [], 0
    for bound, n in zip((*map(float, bounds), float("inf")), counts, strict=True):
        total += n
        out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
    return out


class HttpCollector:
    def __init__(self, series: dict[HttpLabels, HttpSeries]) -> None:
        self.series = series

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        names = list(HTTP_LABELS)
        req = CounterMetricFamily("istio_requests", "Requests.", labels=names)
        dur = HistogramMetricFamily("istio_request_duration_milliseconds", "Request duration (ms).",
                                    labels=names)
        reqb = HistogramMetricFamily("istio_request_bytes", "Request body sizes.", labels=names)
        respb = HistogramMetricFamily("istio_response_bytes", "Response body sizes.", labels=names)
        for labels, s in list(self.series.items()):
            values = list(labels)
            req.add_metric(values, s.requests)
            dur.add_metric(values, _cumulative(DURATION_BUCKETS_MS, s.duration), s.duration_sum)
            reqb.add_metric(values, _cumulative(BYTES_BUCKETS, s.request_bytes), s.request_bytes_sum)
            respb.add_metric(values, _cumulative(BYTES_BUCKETS, s.response_bytes), s.response_bytes_sum)
        yield from (req, dur, reqb, respb)


_TCP_COUNTERS: Final = (
    ("istio_tcp_sent_bytes", "Bytes sent to the client (TCP).", "sent"),
    ("istio_tcp_received_bytes", "Bytes received from the client (TCP).", "received"),
    ("istio_tcp_connections_opened", "TCP connections opened.", "opened"),
    ("istio_tcp_connections_closed", "TCP connections closed.", "closed"),
)


class TcpCollector:
    def __init__(self, children: dict[TcpLabels, TcpChildren]) -> None:
        self.children = children

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        items = list(self.children.items())
        for name, doc, attr in _TCP_COUNTERS:
            fam = CounterMetricFamily(name, doc, labels=TCP_LABELS)
            for labels, ch in items:
                fam.add_metric(list(labels), getattr(ch, attr), created=ch.created if _USE_CREATED else None)
            yield fam


_SERVICE_COUNTERS: Final = (
    ("meshns_retries", "Retries made, per destination service."),
    ("meshns_ejections", "Endpoints ejected by outlier detection, per destination service."),
    ("meshns_breaker_overflows", "Requests refused by the circuit breaker (503 UO)."),
    ("meshns_retry_budget_exhausted", "Retries that were due but refused by the retry budget."),
)


class HealthCollector:
    def __init__(self, read: Callable[[], Health]) -> None:
        self.read = read

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        h = self.read()
        for i, (name, doc) in enumerate(_SERVICE_COUNTERS):
            fam = CounterMetricFamily(name, doc, labels=["destination_service"])
            for svc in sorted(h.services):
                fam.add_metric([svc], h.services[svc][i])
            yield fam
        yield GaugeMetricFamily("meshns_config_version", "Version of the snapshot in use.",
                                value=h.config_version)
        yield CounterMetricFamily("meshns_snapshot_reloads", "Snapshots swapped in.",
                                  value=h.snapshot_reloads)
        yield GaugeMetricFamily("meshns_connections_active", "Downstream connections open now.",
                                value=h.connections_active)


class RefusalCollector:
    """``meshns_http_bad_requests_total{listener,code}``: requests the sidecar refused itself
    (malformed, too large, too slow), per HTTP/1 listener and status. Plain ints bumped by the
    refusal path (``http1.refuse``), turned into a counter family at scrape time."""

    def __init__(self, counts: dict[tuple[str, int], int]) -> None:
        self.counts = counts

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        fam = CounterMetricFamily("meshns_http_bad_requests", "Requests refused by the sidecar, per status.",
                                  labels=["listener", "code"])
        for (listener, code), n in sorted(self.counts.items()):
            fam.add_metric([listener, str(code)], n)
        yield fam


class TasksCollector:
    """``meshns_asyncio_tasks``: the event loop's tasks at scrape time, next to prometheus-client's
    process_open_fds and process_resident_memory_bytes (the registry's ProcessCollector), so a
    leak of tasks shows on the same dashboard as a leak of descriptors or memory."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        tasks = running_tasks()
        if tasks is not None:
            yield GaugeMetricFamily("meshns_asyncio_tasks", "Tasks of the sidecar's event loop.", value=tasks)


def registry_of(m: Metrics) -> CollectorRegistry:
    r = CollectorRegistry(auto_describe=False)
    r.register(HttpCollector(m.http))
    r.register(RefusalCollector(m.refused))
    r.register(TcpCollector(m.tcp))
    if m.health is not None:
        r.register(HealthCollector(m.health))
    if m.process:
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
    if m.tasks:
        r.register(TasksCollector())
    return r


def scraper(m: Metrics) -> Callable[[], bytes]:
    """What ``Metrics.exposition`` calls per scrape: the text of a registry made once."""
    registry = registry_of(m)
    return lambda: generate_latest(registry)
