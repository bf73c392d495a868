"""Pure parsers for what the load generators and /proc print, and the percentile we report.

Every function takes text and returns numbers, so the tests can feed recorded outputs.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024**2, "MB": 1024**2, "G": 1024**3, "GB": 1024**3,
          "T": 1024**4, "TB": 1024**4}


def parse_size(text: str) -> float:
    """wrk's and h2load's byte counts ("56.32MB", "1.21KB", "812B"): binary multiples, as both print."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?B?)\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2).upper()]


def parse_duration_s(text: str) -> float:
    """wrk's durations ("2.10s", "733.44us", "1.01ms", "1.00m")."""
    m = re.fullmatch(r"\s*([0-9.]+)(us|ms|s|m|h)\s*", text)
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2)]
    return float(m.group(1)) * scale


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    bytes_read: float
    rps: float
    socket_errors: int  # connect + read + write + timeout
    non_2xx: int

    @property
    def errors(self) -> int:
        return self.socket_errors + self.non_2xx


def parse_wrk(text: str) -> WrkResult:
    """wrk's summary. The rate is computed from "N requests in Ts" rather than taken from the
    rounded "Requests/sec" line; both agree to the printed precision."""
    m = re.search(r"^\s*(\d+) requests in ([0-9.]+\w+), ([0-9.]+\w*) read", text, re.MULTILINE)
    if not m:
        raise ValueError("wrk printed no summary line (N requests in T, X read):\n" + text[-2000:])
    requests = int(m.group(1))
    duration = parse_duration_s(m.group(2))
    socket_errors = 0
    se = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if se:
        socket_errors = sum(int(g) for g in se.groups())
    n2 = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        requests=requests,
        duration_s=duration,
        bytes_read=parse_size(m.group(3)),
        rps=requests / duration if duration > 0 else 0.0,
        socket_errors=socket_errors,
        non_2xx=int(n2.group(1)) if n2 else 0,
    )


@dataclass(frozen=True)
class H2loadSummary:
    total: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int


def parse_h2load_summary(text: str) -> H2loadSummary:
    """h2load's "requests: ..." and "status codes: ..." lines."""
    m = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", text)
    s = re.search(r"status codes: (\d+) 2xx", text)
    if not m or not s:
        raise ValueError("h2load printed no summary (requests: ... / status codes: ...):\n" + text[-2000:])
    total, ok, failed, errored, timeout = (int(g) for g in m.groups())
    return H2loadSummary(total, ok, failed, errored, timeout, int(s.group(1)))


@dataclass(frozen=True)
class RequestLog:
    """h2load --log-file: one row per request (start us since epoch, status, duration us)."""

    durations_us: tuple[int, ...]  # of the requests that got a response (status != -1)
    failed: int  # status -1 (stream failed) or non-2xx
    starts_us: tuple[int, ...] = ()  # every request's start, in log order

    @property
    def first_start_us(self) -> int:
        return min(self.starts_us, default=0)

    @property
    def last_start_us(self) -> int:
        return max(self.starts_us, default=0)


def parse_h2load_log(text: str) -> RequestLog:
    durations: list[int] = []
    failed = 0
    starts: list[int] = []
    for line in text.splitlines():
        cols = line.split("\t")
        if len(cols) < 3:
            continue  # a partial last line if h2load was cut short; never a whole request
        start, status, duration = int(cols[0]), int(cols[1]), int(cols[2])
        starts.append(start)
        if 200 <= status < 300:
            durations.append(duration)
        else:
            failed += 1
    return RequestLog(tuple(durations), failed, tuple(starts))


@dataclass(frozen=True)
class Arrivals:
    """How the load generator spaced its requests: the median gap between one start and the next,
    and the share of gaps under ``CLUMP_US`` (requests sent together, queueing behind each other)."""

    median_gap_us: float
    clumped: float


CLUMP_US = 50


def arrivals(starts_us: Sequence[int]) -> Arrivals | None:
    ordered = sorted(starts_us)
    gaps = [b - a for a, b in itertools.pairwise(ordered)]
    if not gaps:
        return None
    return Arrivals(median(gaps), sum(g < CLUMP_US for g in gaps) / len(gaps))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (the smallest value with at least q% of the values at or below it).

    Nearest rank rather than interpolation: a p99 is then always a latency some request had,
    which is what HdrHistogram-style tools (wrk2, fortio) report too.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} outside (0, 100]")
    ordered = sorted(values)
    rank = math.ceil(q / 100 * len(ordered))
    return float(ordered[max(rank, 1) - 1])


def latency_ms(log: RequestLog, qs: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """{"p50": ms, ...} from a request log's successful requests."""
    return {f"p{q:g}": percentile(log.durations_us, q) / 1000 for q in qs}


def proc_cpu_ticks(stat_text: str) -> int:
    """utime + stime (clock ticks, all threads) from /proc/PID/stat.

    The command name (field 2) is in parentheses and may itself hold spaces or ')', so the
    fields are counted from the last ')'.
    """
    rest = stat_text[stat_text.rindex(")") + 2:].split()
    # rest[0] is field 3 (state); utime is field 14, stime field 15.
    return int(rest[11]) + int(rest[12])


def proc_status_kb(status_text: str, key: str) -> int:
    """A "Key:   1234 kB" value of /proc/PID/status (VmHWM: peak resident set)."""
    m = re.search(rf"^{re.escape(key)}:\s+(\d+) kB", status_text, re.MULTILINE)
    if not m:
        raise ValueError(f"{key} not in /proc/PID/status")
    return int(m.group(1))


def median(values: Sequence[float]) -> float:
    """Median of the rounds (the middle one, or the mean of the middle two)."""
    if not values:
        raise ValueError("median of no values")
    ordered = sorted(values)
    mid = len(ordered) // 2
    return float(ordered[mid]) if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def ready_pods(list_json: str, names: Collection[str]) -> int:
    """How many of ``names`` `meshns list -o json` shows ready ("state": "ready") with a running
    sidecar: what create promised when it returned."""
    rows = json.loads(list_json)
    if not isinstance(rows, list):
        raise ValueError("meshns list -o json: not a list")
    return sum(1 for r in rows if isinstance(r, dict) and r.get("name") in names
               and r.get("state") == "ready" and r.get("sidecar") == "running")


@dataclass(frozen=True)
class HeldConns:
    """What tests/integration/apps/manyconns.py's client printed when it finished."""

    wanted: int
    opened: int  # connected and answered their first request (only those are held)
    answered: int  # of those, answered again after all were held
    failures: dict[str, dict[str, int]]  # phase -> why -> count
    examples: tuple[str, ...]
    seconds: dict[str, float]  # phase -> s


def parse_manyconns(text: str) -> HeldConns:
    """The client's one JSON line on stdout (its last line, if anything else was printed)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("manyconns printed nothing")
    data = json.loads(lines[-1])
    if not isinstance(data, dict):
        raise ValueError(f"manyconns printed {lines[-1][:80]!r}, not an object")
    return HeldConns(
        wanted=int(data["wanted"]),
        opened=int(data["opened"]),
        answered=int(data["second_ok"]),
        failures={str(phase): {str(k): int(v) for k, v in why.items()} for phase, why in data["failures"].items()},
        examples=tuple(str(e) for e in data.get("examples", ())),
        seconds={str(k): float(v) for k, v in data.get("seconds", {}).items()},
    )


def proc_memory_kb(status_text: str) -> tuple[int, int]:
    """(VmRSS, VmHWM) of /proc/PID/status: resident now and at its peak."""
    return proc_status_kb(status_text, "VmRSS"), proc_status_kb(status_text, "VmHWM")
