"""Running the load generators and reading the proxies' CPU and memory from /proc.

Tools (all Debian packages): wrk for the closed-loop maximum rate and bulk throughput; h2load
(nghttp2-client) for the fixed-rate latency run, since wrk has no fixed-rate mode: `--h1 -c16
--rps=62.5` is 1000 req/s over 16 HTTP/1.1 connections, and `--log-file` gives every request's
latency, from which we compute the percentiles ourselves. h2load paces each connection's
requests on a timer and times each from when it is sent; at 1000 req/s with millisecond
latencies a connection is never still busy when its next request is due, so the pacing holds.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from bench import parse
from bench.topology import Runner, run

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _load(runner: Runner, argv: list[str], timeout: float) -> str:
    done = subprocess.run(runner.argv(*argv), capture_output=True, text=True, timeout=timeout,
                          env=runner.env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:1])} failed (exit {done.returncode}):\n"
                           f"{done.stdout[-1500:]}{done.stderr[-1500:]}")
    return done.stdout


def wrk(runner: Runner, url: str, *, connections: int, seconds: int) -> parse.WrkResult:
    """Closed loop: ``connections`` connections, each sends its next request when the last ended."""
    out = _load(runner, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url], timeout=seconds + 60)
    return parse.parse_wrk(out)


@dataclass(frozen=True)
class FixedRate:
    summary: parse.H2loadSummary
    log: parse.RequestLog


def stagger_ms(rate: float) -> int:
    """How far apart h2load_fixed opens its connections: 1/rate s, in the whole milliseconds
    h2load takes (1 at 1000 req/s)."""
    return max(1, round(1000 / rate))


def h2load_fixed(runner: Runner, url: str, *, connections: int, rate: float, seconds: int,
                 log_path: Path) -> FixedRate:
    """``rate`` req/s in total over ``connections`` HTTP/1.1 connections, one request every
    1/rate s, as Istio's harness sends them (Nighthawk, open loop, a uniform rate limiter).

    h2load's --rps is per connection, and connections opened together fire together: at 1000
    req/s over 16 connections, 16 requests within a few microseconds every 16 ms, so each
    latency would include the wait behind up to 15 others in every proxy on the way. Opening
    the connections 1/rate s apart (-r 1 --rate-period) staggers their timers by as much, which
    spreads the requests evenly. -r excludes -D, so the run is a count (rate x seconds)."""
    log_path.unlink(missing_ok=True)  # h2load appends to an existing log file
    per_conn = rate / connections
    out = _load(runner, ["h2load", "--h1", f"-c{connections}", f"--rps={per_conn:g}", "-r1",
                         f"--rate-period={stagger_ms(rate)}ms", f"-n{round(rate * seconds)}",
                         f"--log-file={log_path}", url], timeout=seconds + 60)
    return FixedRate(parse.parse_h2load_summary(out), parse.parse_h2load_log(log_path.read_text()))


@dataclass(frozen=True)
class ProcSample:
    pid: int
    cpu_ticks: int
    hwm_kb: int


def sample(pid: int) -> ProcSample:
    """CPU ticks (all threads) and peak RSS of ``pid`` now."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    status = Path(f"/proc/{pid}/status").read_text()
    return ProcSample(pid, parse.proc_cpu_ticks(stat), parse.proc_status_kb(status, "VmHWM"))


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` now, in kB: resident now and at its peak so far."""
    return parse.proc_memory_kb(Path(f"/proc/{pid}/status").read_text())


def cpu_seconds(before: ProcSample, after: ProcSample) -> float | None:
    """CPU used between two samples, or None if the process was replaced in between."""
    if before.pid != after.pid:
        return None
    return (after.cpu_ticks - before.cpu_ticks) / CLK_TCK


def _version(argv: list[str], pattern: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "absent"
    m = re.search(pattern, done.stdout + done.stderr)
    return m.group(1) if m else "unknown"


def machine_facts(repo: Path) -> dict[str, object]:
    """What a reader needs to compare two runs: cores, kernel, the versions of every component."""
    def pkg(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "absent"

    commit = run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], check=False).stdout.strip()
    dirty = run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                check=False).stdout.strip()
    cpu_model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": pkg("uvloop"),
        "meshns": pkg("meshns"),
        "meshns_commit": commit + ("+dirty" if dirty else ""),
        "haproxy": _version(["haproxy", "-v"], r"HAProxy version (\S+)"),
        "nginx": _version(["nginx", "-v"], r"nginx/(\S+)"),
        "wrk": _version(["wrk", "-v"], r"wrk (\S+)"),
        "h2load": _version(["h2load", "--version"], r"nghttp2/(\S+)"),
        "openssl": _version(["openssl", "version"], r"OpenSSL (\S+)"),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def cpu_times() -> tuple[int, int]:
    """(steal, total) clock ticks of all CPUs since boot, from /proc/stat's first line. Steal is
    time the hypervisor gave this VM's CPUs to other guests: on a shared host it can take a large
    share of a run, and nothing in the load average shows it."""
    first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return parse_cpu_line(first)


def parse_cpu_line(words: list[str]) -> tuple[int, int]:
    """(steal, total) from /proc/stat's ``cpu`` line split into words (pure). The first eight
    counters are user, nice, system, idle, iowait, irq, softirq, steal; guest time is already
    counted in user, so it is left out of the total."""
    values = [int(w) for w in words[1:9]]
    values += [0] * (8 - len(values))
    return values[7], sum(values)


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of CPU time stolen between two cpu_times() readings (pure); 0 if none passed."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


CALIBRATION_LOOP = 2_000_000


def calibrate_ms(n: int = CALIBRATION_LOOP) -> float:
    """Wall time of a fixed pure-Python loop, in ms: how fast this machine is at the moment. On a
    shared host the same VM runs the same code 1.5-3x slower at some hours than at others, with
    no steal in /proc/stat to show it; each round records this, so rounds can be compared."""
    t = time.perf_counter()
    total = 0
    for i in range(n):
        total += i
    return (time.perf_counter() - t) * 1000


def speed_spread(samples: Sequence[float]) -> float:
    """Slowest over fastest calibration (pure): 1.0 means the machine ran at one speed."""
    return max(samples) / min(samples) if samples and min(samples) > 0 else 1.0


def loadavg() -> float:
    """The 1-minute load average: how busy the machine was besides us (2 cores: >1 is a lot)."""
    return float(Path("/proc/loadavg").read_text().split()[0])
