"""Traffic numbers from two Prometheus scrapes of the sidecars: parsing, rates, error share,
latency quantiles. Pure: text and numbers in, numbers out; ``status`` and ``top`` do the I/O.

Why deltas of two scrapes: the sidecar exports monotonic counters (Istio's names), as Envoy
does; a rate needs two points. A counter that went down between them was reset (the sidecar
restarted), so its new value is the whole delta, as Prometheus' rate() assumes. A series that
is new in the second scrape started at zero inside the window.

Double counting: a request between two meshed pods is reported twice, by the client's sidecar
(reporter="source") and by the server's (reporter="destination"). Pairs are taken from the
source side; destination-side series count only for pairs no source sidecar reported (callers
from outside the mesh).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Labels = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, Labels]
Scrape = dict[SeriesKey, float]

REQUESTS = "istio_requests_total"
DURATION_BUCKET = "istio_request_duration_milliseconds_bucket"
UNKNOWN = "unknown"


def _unescape(value: str) -> str:
    return value.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")


def _parse_labels(text: str) -> Labels:
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " ,":
            i += 1
        if i >= n:
            break
        eq = text.index("=", i)
        name = text[i:eq].strip()
        j = text.index('"', eq) + 1
        start = j
        while text[j] != '"':
            j += 2 if text[j] == "\\" else 1
        out.append((name, _unescape(text[start:j])))
        i = j + 1
    return tuple(sorted(out))


def parse_prometheus(text: str) -> Scrape:
    """Prometheus text exposition (0.0.4) -> {(name, sorted labels): value}. Comments skipped,
    timestamps ignored, unparsable lines skipped (a scrape must not fail on one odd line)."""
    out: Scrape = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if "{" in line:
                name, rest = line.split("{", 1)
                close = rest.rindex("}")
                labels = _parse_labels(rest[:close])
                value = rest[close + 1:].split()[0]
            else:
                name, value = line.split()[:2]
                labels = ()
            out[(name.strip(), labels)] = float(value)
        except (ValueError, IndexError):
            continue
    return out


def deltas(before: Scrape, after: Scrape, name: str) -> dict[Labels, float]:
    """Counter increase per series of ``name`` between two scrapes of one sidecar."""
    out: dict[Labels, float] = {}
    for (n, labels), value in after.items():
        if n != name:
            continue
        old = before.get((n, labels), 0.0)
        out[labels] = value if value < old else value - old  # down means reset
    return out


def _get(labels: Labels, key: str) -> str:
    return dict(labels).get(key, UNKNOWN)


def _is_error(labels: Labels) -> bool:
    return _get(labels, "response_code").startswith("5")


@dataclass(frozen=True)
class PodTraffic:
    """One pod's requests over the window: inbound (reporter=destination) plus outbound
    (reporter=source), as its own sidecar reported them."""

    window_s: float
    inbound: float
    inbound_errors: float
    outbound: float
    outbound_errors: float

    @property
    def rps(self) -> float:
        return (self.inbound + self.outbound) / self.window_s if self.window_s > 0 else 0.0

    @property
    def error_rate(self) -> float | None:
        total = self.inbound + self.outbound
        return (self.inbound_errors + self.outbound_errors) / total if total else None

    def as_dict(self) -> dict[str, object]:
        w = self.window_s or 1.0
        return {
            "window_s": self.window_s,
            "rps": round(self.rps, 3),
            "error_rate": None if self.error_rate is None else round(self.error_rate, 4),
            "inbound": {"requests": self.inbound, "errors": self.inbound_errors, "rps": round(self.inbound / w, 3)},
            "outbound": {"requests": self.outbound, "errors": self.outbound_errors,
                         "rps": round(self.outbound / w, 3)},
        }


def pod_traffic(before: Scrape, after: Scrape, window_s: float) -> PodTraffic:
    counts = {"destination": [0.0, 0.0], "source": [0.0, 0.0]}
    for labels, d in deltas(before, after, REQUESTS).items():
        slot = counts.get(_get(labels, "reporter"))
        if slot is not None:
            slot[0] += d
            slot[1] += d if _is_error(labels) else 0.0
    return PodTraffic(window_s, counts["destination"][0], counts["destination"][1],
                      counts["source"][0], counts["source"][1])


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' histogram_quantile on cumulative bucket counts {le: count}: linear
    interpolation inside the bucket holding the rank; the +Inf bucket gives the highest finite
    bound. None when there were no observations."""
    bounds = sorted(buckets)
    if not bounds:
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return prev_bound
            if count == prev_count:
                return le
            return prev_bound + (le - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = le, count
    return prev_bound


@dataclass(frozen=True)
class PairStats:
    source: str
    destination: str
    reporter: str
    rps: float
    success_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    requests: float

    def as_dict(self) -> dict[str, object]:
        def r(x: float | None, n: int) -> float | None:
            return None if x is None else round(x, n)
        return {"source": self.source, "destination": self.destination, "reporter": self.reporter,
                "rps": round(self.rps, 3), "success_rate": r(self.success_rate, 4),
                "p50_ms": r(self.p50_ms, 2), "p95_ms": r(self.p95_ms, 2), "requests": self.requests}


def _destination(labels: Labels) -> str:
    svc = _get(labels, "destination_service")
    return svc if svc != UNKNOWN else _get(labels, "destination_workload")


def _pair(labels: Labels) -> tuple[str, str]:
    return _get(labels, "source_workload"), _get(labels, "destination_workload")


def top_pairs(samples: Iterable[tuple[Scrape, Scrape]], window_s: float) -> list[PairStats]:
    """Busiest source -> destination pairs across every sidecar's pair of scrapes, busiest first."""
    pairs = [(deltas(b, a, REQUESTS), deltas(b, a, DURATION_BUCKET)) for b, a in samples]
    # Workload pairs some client sidecar reported: the destination side's copies are duplicates.
    by_source = {_pair(labels) for reqs, _ in pairs for labels, d in reqs.items()
                 if _get(labels, "reporter") == "source" and d > 0}

    def wanted(labels: Labels) -> bool:
        reporter = _get(labels, "reporter")
        return reporter == "source" or (reporter == "destination" and _pair(labels) not in by_source)

    req: dict[tuple[str, str, str], list[float]] = {}  # (reporter, src, dst) -> [requests, errors]
    hist: dict[tuple[str, str, str], dict[float, float]] = {}
    for reqs, buckets in pairs:
        for labels, d in reqs.items():
            if wanted(labels):
                slot = req.setdefault((_get(labels, "reporter"), _get(labels, "source_workload"),
                                       _destination(labels)), [0.0, 0.0])
                slot[0] += d
                slot[1] += d if _is_error(labels) else 0.0
        for labels, d in buckets.items():
            le_text = dict(labels).get("le")
            if le_text is None or not wanted(labels):
                continue
            key = (_get(labels, "reporter"), _get(labels, "source_workload"), _destination(labels))
            le = math.inf if le_text in ("+Inf", "Inf") else float(le_text)
            b = hist.setdefault(key, {})
            b[le] = b.get(le, 0.0) + d
    out: list[PairStats] = []
    for key, (n, errors) in req.items():
        if n <= 0:
            continue
        reporter, src, dst = key
        h = hist.get(key, {})
        out.append(PairStats(src, dst, reporter, n / window_s if window_s > 0 else 0.0, (n - errors) / n,
                             histogram_quantile(0.5, h), histogram_quantile(0.95, h), n))
    out.sort(key=lambda p: (-p.rps, p.source, p.destination))
    return out
