"""From raw per-round figures to medians, ratios, the issue's bar, a table, JSON and a chart.

Everything but write_chart is pure. Units: MB is 10^6 bytes (RSS and throughput alike), latency
in milliseconds, CPU in seconds of one core per 1000 requests (equal to vCPU per 1000 req/s).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.parse import median, percentile

# "floor": the least a Python sidecar pair can do per request (bench/floor_proxy.py: uvloop, mTLS,
# llhttp parsing each head, no mesh features). Measured for the request rows only; it says which
# part of meshns's cost any Python proxy pays and which part meshns's features add.
SYSTEMS = ("direct", "meshns", "haproxy", "floor")
BULK_SYSTEMS = ("direct", "meshns", "haproxy")
# Case kinds, in the order they run within a round.
KINDS = ("rps", "fixed", "bulk", "bulk_plain")
KIND_SYSTEMS = {"rps": SYSTEMS, "fixed": SYSTEMS, "bulk": BULK_SYSTEMS, "bulk_plain": ("meshns", "haproxy")}

Figures = dict[str, Any]  # one case's figures: numbers, or {proxy label: number}

# The scale part of the bar (issue 7), at full size.
SCALE_PODS = 100
SCALE_CONNS = 10_000
CREATE_MS_TARGET = 500.0
IDLE_RSS_MB_TARGET = 150.0


@dataclass(frozen=True)
class PodScale:
    """N pods made with `meshns create`, one after another, in the benchmark's mesh."""

    wanted: int
    create_ms: tuple[float, ...]  # wall time of each create that succeeded, start to exit, in order
    failed: int  # creates that exited non-zero or timed out
    ready: int  # pods `meshns list` showed ready with a running sidecar once all were made
    delete_s: float | None  # one `meshns delete` of them all

    def figures(self) -> dict[str, float | None]:
        ms = self.create_ms
        return {"median_ms": median(ms) if ms else None, "p90_ms": percentile(ms, 90) if ms else None,
                "max_ms": max(ms) if ms else None}


@dataclass(frozen=True)
class IdleScale:
    """M HTTP/1.1 keep-alive connections held idle through one (the client's) sidecar."""

    wanted: int
    opened: int  # connected and answered once; all of these were then held at once
    answered: int  # of those, answered again after the hold
    active: int | None  # live connections the sidecar itself counted while they were held
    rss_before_mb: float  # the sidecar's VmRSS before the first connection
    rss_held_mb: float  # its VmRSS while all were held
    rss_peak_mb: float  # its VmHWM while all were held (the ramp included)
    open_s: float | None  # how long opening them all took
    failures: dict[str, dict[str, int]]  # phase -> why -> count, as the client app counted them


@dataclass(frozen=True)
class Scale:
    pods: PodScale | None
    idle: IdleScale | None
    seconds: float  # the whole section, wall time

    @property
    def full_size(self) -> bool:
        return (self.pods is not None and self.pods.wanted >= SCALE_PODS
                and self.idle is not None and self.idle.wanted >= SCALE_CONNS)



def medians(rounds: Sequence[Mapping[str, Figures]]) -> dict[str, Figures]:
    """Per case ("kind/system"), the median over rounds of every figure; a figure that is a
    mapping (one value per proxy process) gets a median per key. None values are skipped."""
    out: dict[str, Figures] = {}
    keys = list(dict.fromkeys(k for r in rounds for k in r))
    for key in keys:
        cases = [r[key] for r in rounds if key in r]
        merged: Figures = {}
        for field in dict.fromkeys(f for c in cases for f in c):
            values = [c[field] for c in cases if c.get(field) is not None]
            if values and isinstance(values[0], Mapping):
                merged[field] = {
                    label: median(vs) if (vs := [v[label] for v in values if v.get(label) is not None]) else None
                    for label in dict.fromkeys(lbl for v in values for lbl in v)
                }
            elif values and isinstance(values[0], int | float):
                merged[field] = median([float(v) for v in values])
            else:
                merged[field] = values[0] if values else None
        out[key] = merged
    return out


def _get(med: Mapping[str, Figures], key: str, field: str) -> float | None:
    value = med.get(key, {}).get(field)
    return float(value) if isinstance(value, int | float) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _diff(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def ratios(med: Mapping[str, Figures]) -> dict[str, dict[str, float | None]]:
    """Each proxied system against direct (the physical limit), meshns against HAProxy, and the
    floor against HAProxy and meshns."""
    out: dict[str, dict[str, float | None]] = {}
    for system in ("meshns", "haproxy", "floor"):
        r: dict[str, float | None] = {
            "rps_vs_direct": _ratio(_get(med, f"rps/{system}", "rps"), _get(med, "rps/direct", "rps")),
            "bulk_tls_vs_direct": _ratio(_get(med, f"bulk/{system}", "mb_s"), _get(med, "bulk/direct", "mb_s")),
            "bulk_plain_vs_direct": _ratio(_get(med, f"bulk_plain/{system}", "mb_s"),
                                           _get(med, "bulk/direct", "mb_s")),
        }
        for q in ("p50", "p90", "p99"):
            r[f"added_{q}_ms"] = _diff(_get(med, f"fixed/{system}", f"{q}_ms"), _get(med, "fixed/direct", f"{q}_ms"))
        out[system] = r
    out["meshns"].update({
        "rps_vs_haproxy": _ratio(_get(med, "rps/meshns", "rps"), _get(med, "rps/haproxy", "rps")),
        "bulk_tls_vs_haproxy": _ratio(_get(med, "bulk/meshns", "mb_s"), _get(med, "bulk/haproxy", "mb_s")),
        "bulk_plain_vs_haproxy": _ratio(_get(med, "bulk_plain/meshns", "mb_s"),
                                        _get(med, "bulk_plain/haproxy", "mb_s")),
    })
    for q in ("p50", "p90", "p99"):
        out["meshns"][f"{q}_vs_haproxy_ms"] = _diff(_get(med, "fixed/meshns", f"{q}_ms"),
                                                    _get(med, "fixed/haproxy", f"{q}_ms"))
    out["floor"]["rps_vs_haproxy"] = _ratio(_get(med, "rps/floor", "rps"), _get(med, "rps/haproxy", "rps"))
    out["meshns"]["rps_vs_floor"] = _ratio(_get(med, "rps/meshns", "rps"), _get(med, "rps/floor", "rps"))
    out["meshns"]["cpu_vs_floor"] = _ratio(_worst(med.get("fixed/meshns", {}).get("cpu_s_per_1k")),
                                           _worst(med.get("fixed/floor", {}).get("cpu_s_per_1k")))
    return out


Ratios = dict[str, dict[str, float | None]]  # system -> ratio or added latency -> value


def round_ratios(rounds: Sequence[Mapping[str, Figures]]) -> tuple[Ratios, list[Ratios]]:
    """Every ratio and added latency from each round's own figures, and the median of those over
    the rounds (the first item; the second is the per-round list).

    Why per round: the cases of one round run back to back, within a minute or two of each other,
    and the next round runs minutes later. On a shared VM whose speed drifts by 1.5-2x in that time
    (the calibration loop shows it), a ratio of two medians can pair a fast round's figure with a
    slow round's; a round's own ratio compares like with like."""
    per = [ratios(r) for r in rounds]
    if not per:
        return ratios({}), []
    out: Ratios = {}
    for system in per[0]:
        out[system] = {}
        for key in per[0][system]:
            values = [v for p in per if (v := p[system].get(key)) is not None]
            out[system][key] = median(values) if values else None
    return out, per


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: float | None
    unit: str
    met: bool | None  # None: could not be measured, or not at the target's size
    # What the figure is of when that is smaller than the target's size (a --quick run: "10 pods");
    # such a figure is shown but not judged.
    of: str = ""
    # A ratio or an added latency: the value of each round, whose median is ``measured``.
    rounds: tuple[float | None, ...] = ()

    @property
    def word(self) -> str:
        if self.of and self.measured is not None:
            return "not at full size"
        return {True: "met", False: "NOT met", None: "not measured"}[self.met]


def _at_least(measured: float | None, floor: float) -> bool | None:
    return None if measured is None else measured >= floor


def _at_most(measured: float | None, ceiling: float) -> bool | None:
    return None if measured is None else measured <= ceiling


def _worst(values: Mapping[str, Any] | None) -> float | None:
    nums = [float(v) for v in (values or {}).values() if isinstance(v, int | float)]
    return max(nums) if nums else None


def bar(med: Mapping[str, Figures], rat: Mapping[str, Mapping[str, float | None]],
        rss_peak_mb: Mapping[str, Mapping[str, float]], scale: Scale | None = None,
        per_round: Sequence[Mapping[str, Mapping[str, float | None]]] = ()) -> list[Verdict]:
    """The issue's targets for the full mesh path, each with the measured figure: ``rat`` as
    round_ratios gives it (``per_round`` its values round by round, shown next to it). CPU and
    RSS are per sidecar, so the worse of the two sidecars' medians is what is checked. Then the
    scale part (see scale_bar)."""
    m = rat["meshns"]
    cpu = _worst(med.get("fixed/meshns", {}).get("cpu_s_per_1k"))
    rss = _worst(rss_peak_mb.get("meshns"))

    def judged(target: str, key: str, unit: str, ok: Callable[[float | None], bool | None]) -> Verdict:
        return Verdict(target, m[key], unit, ok(m[key]), rounds=tuple(r["meshns"].get(key) for r in per_round))

    return [
        judged("HTTP/1.1 max req/s >= 1.0x HAProxy's", "rps_vs_haproxy", "x", lambda v: _at_least(v, 1.0)),
        judged("added p90 over direct at 1000 req/s <= 0.6 ms", "added_p90_ms", "ms", lambda v: _at_most(v, 0.6)),
        judged("added p99 over direct at 1000 req/s <= 1.5 ms", "added_p99_ms", "ms", lambda v: _at_most(v, 1.5)),
        Verdict("CPU <= 0.10 vCPU per 1000 req/s per sidecar", cpu, "vCPU", _at_most(cpu, 0.10)),
        Verdict("RSS <= 40 MB per sidecar", rss, "MB", _at_most(rss, 40.0)),
        judged("L4 bulk without mTLS >= 0.9x direct", "bulk_plain_vs_direct", "x", lambda v: _at_least(v, 0.9)),
        judged("L4 bulk with mTLS >= 1.0x HAProxy with TLS", "bulk_tls_vs_haproxy", "x", lambda v: _at_least(v, 1.0)),
        *scale_bar(scale),
    ]


def scale_bar(scale: Scale | None) -> list[Verdict]:
    """The scale targets. A figure only counts when everything it is a figure of worked: the
    median of creates only when every pod came up ready, the RSS only when every connection
    answered twice (otherwise NOT met, with the figure shown). A run smaller than the target's
    size (--quick) shows its figure with what it is of, unjudged."""
    pods = scale.pods if scale else None
    idle = scale.idle if scale else None
    create = pods.figures()["median_ms"] if pods else None
    rss = idle.rss_peak_mb if idle else None
    create_met = rss_met = None
    if pods and create is not None:
        create_met = create < CREATE_MS_TARGET and pods.ready == pods.wanted and not pods.failed
    if idle and rss is not None:
        rss_met = rss < IDLE_RSS_MB_TARGET and idle.answered == idle.wanted
    create_of = f"{pods.wanted} pods" if pods and pods.wanted < SCALE_PODS else ""
    rss_of = f"{idle.wanted:,} connections" if idle and idle.wanted < SCALE_CONNS else ""
    return [
        Verdict(f"median create->ready < {CREATE_MS_TARGET:g} ms", create, "ms",
                None if create_of else create_met, create_of),
        Verdict(f"{SCALE_CONNS:,} idle connections < {IDLE_RSS_MB_TARGET:g} MB RSS per sidecar", rss, "MB",
                None if rss_of else rss_met, rss_of),
    ]


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def table(med: Mapping[str, Figures], rat: Mapping[str, Mapping[str, float | None]],
          rss_peak_mb: Mapping[str, Mapping[str, float]]) -> str:
    """The terminal report: one column per system, then the ratios."""
    rows: list[tuple[str, list[str]]] = [
        ("max req/s (1 KB, 16 conns)", [_fmt(_get(med, f"rps/{s}", "rps"), 0) for s in SYSTEMS]),
        ("  at 1000 req/s: achieved", [_fmt(_get(med, f"fixed/{s}", "rate"), 0) for s in SYSTEMS]),
    ]
    rows += [(f"  latency {q} ms", [_fmt(_get(med, f"fixed/{s}", f"{q}_ms")) for s in SYSTEMS])
             for q in ("p50", "p90", "p99")]
    for side in ("client", "server"):
        cells = []
        for s in SYSTEMS:
            per = med.get(f"fixed/{s}", {}).get("cpu_s_per_1k") or {}
            cells.append(_fmt(next((v for k, v in per.items() if k.startswith(side)), None), 3))
        rows.append((f"  CPU s/1k req, {side} proxy", cells))
    for side in ("client", "server"):
        cells = [_fmt(next((v for k, v in rss_peak_mb.get(s, {}).items() if k.startswith(side)), None), 1)
                 for s in SYSTEMS]
        rows.append((f"peak RSS MB, {side} proxy", cells))
    rows.append(("bulk MB/s (1 MiB), mTLS", [_fmt(_get(med, f"bulk/{s}", "mb_s"), 0) for s in SYSTEMS]))
    rows.append(("bulk MB/s (1 MiB), plain",
                 [_fmt(_get(med, "bulk/direct", "mb_s"), 0)]
                 + [_fmt(_get(med, f"bulk_plain/{s}", "mb_s"), 0) for s in SYSTEMS[1:]]))
    width = max(len(r[0]) for r in rows) + 2
    lines = ["".ljust(width) + "".join(s.rjust(11) for s in SYSTEMS)]
    lines += [label.ljust(width) + "".join(c.rjust(11) for c in cells) for label, cells in rows]
    lines.append("(direct has no TLS: its bulk figure is the limit for both bulk rows)")
    lines.append("(floor: a Python proxy pair doing only mTLS and llhttp parsing, no mesh features; "
                 "request rows only)")
    m, h, f = rat["meshns"], rat["haproxy"], rat["floor"]
    heads = ("meshns/direct", "meshns/haproxy", "haproxy/direct")
    lines += ["", "ratios".ljust(width) + "".join(c.rjust(15) for c in heads)]
    for label, key, hkey in (("max req/s", "rps_vs_direct", "rps_vs_haproxy"),
                             ("bulk mTLS", "bulk_tls_vs_direct", "bulk_tls_vs_haproxy"),
                             ("bulk plain", "bulk_plain_vs_direct", "bulk_plain_vs_haproxy")):
        lines.append(label.ljust(width) + "".join(_fmt(v).rjust(15) for v in (m[key], m[hkey], h[key])))
    added = ("meshns-direct", "meshns-haproxy", "haproxy-direct")
    lines.append("added latency ms".ljust(width) + "".join(c.rjust(15) for c in added))
    for q in ("p50", "p90", "p99"):
        lines.append(f"  {q}".ljust(width) + "".join(
            _fmt(v).rjust(15) for v in (m[f"added_{q}_ms"], m[f"{q}_vs_haproxy_ms"], h[f"added_{q}_ms"])))
    lines += ["the Python floor (no mesh features):",
              f"  max req/s: floor/haproxy {_fmt(f['rps_vs_haproxy'])}, floor/direct {_fmt(f['rps_vs_direct'])}, "
              f"meshns/floor {_fmt(m['rps_vs_floor'])}",
              f"  added latency over direct, p50 / p90 / p99 ms: {_fmt(f['added_p50_ms'])} / "
              f"{_fmt(f['added_p90_ms'])} / {_fmt(f['added_p99_ms'])}",
              f"  CPU per request, the busier proxy of each pair: meshns/floor {_fmt(m['cpu_vs_floor'])}"]
    lines.append("(ratios and added latency: each round's own, then their median over the rounds)")
    return "\n".join(lines)


def bar_text(verdicts: Sequence[Verdict]) -> str:
    lines = ["bar (issue 7 targets, full mesh path):"]
    for v in verdicts:
        figure = "-" if v.measured is None else f"{v.measured:.3f} {v.unit}"
        if v.of and v.measured is not None:
            figure += f" (of {v.of}: not comparable)"
        if len(v.rounds) > 1:
            figure += " (median of rounds: " + ", ".join(_fmt(r) for r in v.rounds) + ")"
        lines.append(f"  {v.word:<16} {v.target:<54} measured {figure}")
    return "\n".join(lines)


def scale_table(scale: Scale | None) -> str:
    """The scale section's rows for the terminal and bench.txt."""
    if scale is None:
        return "scale: not run"
    size = "full size" if scale.full_size else "quick size: not comparable to the targets"
    lines = [f"scale, one host ({size}; {scale.seconds:.0f} s)"]
    rows: list[tuple[str, str]] = []
    if scale.pods is not None:
        p, f = scale.pods, scale.pods.figures()
        rows.append((f"meshns create -> ready, {p.wanted} pods in turn",
                     f"median {_fmt(f['median_ms'], 0)} ms  p90 {_fmt(f['p90_ms'], 0)} ms  "
                     f"max {_fmt(f['max_ms'], 0)} ms"))
        rows.append(("  pods listed ready", f"{p.ready} of {p.wanted}"
                     + (f" ({p.failed} create(s) failed)" if p.failed else "")))
        if p.delete_s is not None:
            rows.append(("  meshns delete of them all", f"{p.delete_s:.1f} s"))
    if scale.idle is not None:
        i = scale.idle
        rows.append((f"{i.wanted:,} idle keep-alive conns, one sidecar",
                     f"{i.answered:,} of {i.wanted:,} answered" + (f" (opened {i.opened:,})" if i.opened != i.wanted
                                                                     else "")))
        rows.append(("  client sidecar peak RSS MB", f"{i.rss_peak_mb:.1f} (held {i.rss_held_mb:.1f}, "
                     f"before {i.rss_before_mb:.1f})"))
        if i.active is not None:
            rows.append(("  live connections in the sidecar", f"{i.active:,}"))
        if i.failures:
            rows.append(("  client app failures",
                         "; ".join(f"{phase}: {dict(why)}" for phase, why in i.failures.items())))
    width = max((len(r[0]) for r in rows), default=0) + 2
    lines += [f"  {label.ljust(width)}{value}" for label, value in rows]
    return "\n".join(lines)


def scale_document(scale: Scale | None) -> dict[str, Any] | None:
    """bench.json's "scale": the raw figures and the summary of each part."""
    if scale is None:
        return None
    pods = None if scale.pods is None else {**asdict(scale.pods), **scale.pods.figures()}
    idle = None if scale.idle is None else asdict(scale.idle)
    return {"full_size": scale.full_size, "seconds": scale.seconds, "pods": pods, "idle": idle}


def document(*, machine: Mapping[str, object], settings: Mapping[str, object],
             rounds: Sequence[Mapping[str, Figures]], med: Mapping[str, Figures],
             rat: Mapping[str, Mapping[str, float | None]], rss_peak_mb: Mapping[str, Mapping[str, float]],
             verdicts: Sequence[Verdict], notes: Sequence[str], scale: Scale | None = None,
             per_round: Sequence[Mapping[str, Mapping[str, float | None]]] = ()) -> dict[str, Any]:
    """bench.json: enough to redo every number in the table from the raw figures. "ratios" are
    the medians of "ratios_per_round" (see round_ratios)."""
    return {
        "machine": dict(machine),
        "settings": dict(settings),
        "units": {"rps": "requests/s", "latency": "ms", "cpu_s_per_1k": "CPU seconds per 1000 requests "
                  "(= vCPU per 1000 req/s)", "rss": "MB (10^6 bytes), VmHWM", "mb_s": "MB/s (10^6 bytes) of "
                  "response bodies", "create_ms": "ms, wall time of one `meshns create` (it returns when the "
                  "pod is ready)"},
        "rounds": [dict(r) for r in rounds],
        "median": dict(med),
        "rss_peak_mb": {k: dict(v) for k, v in rss_peak_mb.items()},
        "ratios": {k: dict(v) for k, v in rat.items()},
        "ratios_per_round": [{k: dict(v) for k, v in r.items()} for r in per_round],
        "scale": scale_document(scale),
        "bar": [asdict(v) | {"verdict": v.word} for v in verdicts],
        "notes": list(notes),
    }


def write_chart(path: Path, med: Mapping[str, Figures], rss_peak_mb: Mapping[str, Mapping[str, float]],
                scale: Scale | None = None) -> None:
    """bench.png: four bar charts (max rate, latency, CPU and RSS per proxy, bulk), and with the
    scale section two more (create->ready of each pod in turn, the idle connections' sidecar RSS)."""
    # Imported here: only the chart needs matplotlib (the pure parts and their tests do not), and
    # the Agg backend (no display) must be chosen before pyplot is imported.
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    colors = {"direct": "#7f7f7f", "meshns": "#1f77b4", "haproxy": "#ff7f0e", "floor": "#9467bd"}
    fig, axes = plt.subplots(2, 3 if scale else 2, figsize=(18 if scale else 12, 8), squeeze=False)
    ax = axes[0][0]
    values = [_get(med, f"rps/{s}", "rps") or 0 for s in SYSTEMS]
    ax.bar(SYSTEMS, values, color=[colors[s] for s in SYSTEMS])
    ax.set_title("max requests/s (1 KB, wrk -c16, closed loop)")
    for i, v in enumerate(values):
        ax.annotate(f"{v:,.0f}", (i, v), ha="center", va="bottom", fontsize=8)

    ax = axes[0][1]
    width = 0.8 / len(SYSTEMS)
    for i, s in enumerate(SYSTEMS):
        qs = [_get(med, f"fixed/{s}", f"{q}_ms") or 0 for q in ("p50", "p90", "p99")]
        ax.bar([x + (i - (len(SYSTEMS) - 1) / 2) * width for x in range(3)], qs, width, label=s, color=colors[s])
    ax.set_xticks(range(3), ["p50", "p90", "p99"])
    ax.set_ylabel("ms")
    ax.set_title("latency at 1000 req/s over 16 connections (h2load)")
    ax.legend()

    ax = axes[1][0]
    labels, cpu, rss, cols = [], [], [], []
    for s in SYSTEMS[1:]:
        per = med.get(f"fixed/{s}", {}).get("cpu_s_per_1k") or {}
        for label, value in per.items():
            labels.append(f"{s}\n{label}")
            cpu.append(value or 0)
            rss.append(rss_peak_mb.get(s, {}).get(label, 0))
            cols.append(colors[s])
    ax.bar(range(len(labels)), cpu, color=cols)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel("CPU s per 1000 requests")
    ax.axhline(0.10, color="red", linestyle="--", linewidth=1, label="target 0.10")
    ax.set_title("CPU per proxy process at 1000 req/s (peak RSS MB above)")
    for i, (c, r) in enumerate(zip(cpu, rss, strict=True)):
        ax.annotate(f"{r:.0f} MB", (i, c), ha="center", va="bottom", fontsize=8)
    ax.legend()

    ax = axes[1][1]
    tls = [_get(med, f"bulk/{s}", "mb_s") or 0 for s in BULK_SYSTEMS]
    plain = [_get(med, "bulk/direct", "mb_s") or 0] + [_get(med, f"bulk_plain/{s}", "mb_s") or 0
                                                        for s in BULK_SYSTEMS[1:]]
    ax.bar([x - 0.2 for x in range(3)], tls, 0.4, label="mTLS (direct: none)", color="#2ca02c")
    ax.bar([x + 0.2 for x in range(3)], plain, 0.4, label="plain", color="#98df8a")
    ax.set_xticks(range(3), list(BULK_SYSTEMS))
    ax.set_ylabel("MB/s")
    ax.set_title("bulk: 1 MiB bodies (wrk, closed loop)")
    ax.legend()

    if scale:
        _scale_panels(axes[0][2], axes[1][2], scale)
    fig.suptitle("meshns benchmark: direct vs meshns vs HAProxy, and the Python floor (medians of the rounds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _scale_panels(ax_pods: Any, ax_idle: Any, scale: Scale) -> None:
    size = "" if scale.full_size else " (quick size)"
    if scale.pods is not None:
        p = scale.pods
        ax_pods.plot(range(1, len(p.create_ms) + 1), p.create_ms, marker=".", color="#1f77b4", linewidth=1)
        ax_pods.axhline(CREATE_MS_TARGET, color="red", linestyle="--", linewidth=1,
                        label=f"target median {CREATE_MS_TARGET:g} ms")
        median_ms = p.figures()["median_ms"]
        if median_ms is not None:
            ax_pods.axhline(median_ms, color="#1f77b4", linestyle=":", linewidth=1, label=f"median {median_ms:,.0f} ms")
        ax_pods.set_ylim(bottom=0)
        ax_pods.set_xlabel("pod, in order of creation")
        ax_pods.set_ylabel("ms")
        ax_pods.set_title(f"meshns create -> ready, {p.wanted} pods{size}: {p.ready} ready")
        ax_pods.legend()
    if scale.idle is not None:
        i = scale.idle
        values = [i.rss_before_mb, i.rss_held_mb, i.rss_peak_mb]
        ax_idle.bar(["before", "held (VmRSS)", "peak (VmHWM)"], values, color="#1f77b4")
        ax_idle.axhline(IDLE_RSS_MB_TARGET, color="red", linestyle="--", linewidth=1,
                        label=f"target {IDLE_RSS_MB_TARGET:g} MB at {SCALE_CONNS:,}")
        for x, v in enumerate(values):
            ax_idle.annotate(f"{v:.1f}", (x, v), ha="center", va="bottom", fontsize=8)
        ax_idle.set_ylabel("MB")
        ax_idle.set_title(f"client sidecar RSS, {i.wanted:,} idle keep-alive connections{size}\n"
                          f"{i.answered:,} of {i.wanted:,} answered", fontsize=10)
        ax_idle.legend()
