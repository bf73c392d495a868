"""Text for people from the dicts status, top and explain return (JSON output prints the dicts)."""

from __future__ import annotations

from typing import Any

from meshns.cli.output import table


def fmt_rate(rps: float | None) -> str:
    if rps is None:
        return "-"
    return f"{rps:.1f}" if rps < 100 else f"{rps:.0f}"


def fmt_pct(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


def fmt_ms(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.0f}ms" if ms >= 10 else f"{ms:.1f}ms"


def _traffic(d: dict[str, Any]) -> tuple[str, str]:
    t = d.get("traffic")
    return (fmt_rate(t["rps"]), fmt_pct(t["error_rate"])) if t else ("-", "-")


def status_table(details: list[dict[str, Any]]) -> str:
    if not details:
        return "no pods"
    rows = []
    for d in details:
        rps, err = _traffic(d)
        rows.append([d["name"], d["ip"], ",".join(d["services"]) or "-", d["sidecar"], d["sidecar_restarts"],
                     d["app"], rps, err])
    return table(["NAME", "IP", "SERVICES", "SIDECAR", "RESTARTS", "APP", "RPS", "ERR%"], rows)


def status_detail(d: dict[str, Any]) -> str:
    rps, err = _traffic(d)
    t = d.get("traffic")
    lines = [
        f"pod:        {d['name']} ({d['state']}, {d['phase']})",
        f"address:    {d['ip']} on {d['netns']}, veth {d['veth']} -> bridge {d['bridge']}",
        f"services:   {', '.join(d['services']) or '-'}",
        f"identity:   {d.get('identity') or '-'} (cert expires {d.get('cert_expiry') or '-'})",
        f"rules:      {d['rules']}",
        f"sidecar:    pid {d['sidecar_pid']} {d['sidecar']}, restarts {d['sidecar_restarts']}",
        f"app:        pid {d['app_pid'] or '-'} {d['app']}: {' '.join(d['app_command']) or '(none)'}",
        f"requests:   {rps}/s, errors {err}" + (
            f" (in {fmt_rate(t['inbound']['rps'])}/s, out {fmt_rate(t['outbound']['rps'])}/s "
            f"over {t['window_s']:.1f} s)" if t else " (sidecar has no metrics)"),
        f"log:        {d['log']}",
        f"app log:    {d['app_log']}",
    ]
    stats = d.get("sidecar_stats") or {}
    if stats:
        flat = {f"{k}.{sub}" if isinstance(v, dict) else k: sv
                for k, v in stats.items() for sub, sv in (v.items() if isinstance(v, dict) else [(k, v)])}
        lines.append("traffic:    " + ", ".join(f"{k}={v}" for k, v in sorted(flat.items())
                                                if isinstance(v, int) and not isinstance(v, bool) and k != "pid"))
    if d.get("error"):
        lines.append(f"error:      {d['error']}")
    return "\n".join(lines)


def top_table(sample: dict[str, Any]) -> str:
    pairs = sample["pairs"]
    head = f"meshns top: {len(pairs)} pair(s) over {sample['window_s']:.1f} s, {sample['pods']} pod(s) scraped"
    if not pairs:
        return head + "\n(no requests)"
    return head + "\n\n" + table(
        ["SOURCE", "DESTINATION", "RPS", "SUCCESS", "P50", "P95"],
        [[p["source"], p["destination"], fmt_rate(p["rps"]), fmt_pct(p["success_rate"]), fmt_ms(p["p50_ms"]),
          fmt_ms(p["p95_ms"])] for p in pairs])


def _route_line(r: dict[str, Any]) -> str:
    matches = " or ".join(
        " and ".join(f"{k} {v['kind']} {v['value']!r}" for k, v in m.items() if isinstance(v, dict))
        + "".join(f" header {h['name']} {h['match']['kind']} {h['match']['value']!r}" for h in m["headers"])
        for m in r["matches"]) or "every request"
    dests = ", ".join(f"{d['subset'] or 'all'} {d['weight']}%" for d in r["destinations"])
    retry = r["retries"]
    extras = [f"retries {retry['attempts']} on {','.join(retry['retry_on'])}"
              + (f" per try {retry['per_try_timeout_s']}s" if retry["per_try_timeout_s"] else ""),
              f"timeout {r['timeout_s']}s" if r["timeout_s"] else "no timeout"]
    if r["fault"]:
        f = r["fault"]
        extras.append(f"fault delay {f['delay_s']}s@{f['delay_percent']}% "
                      f"abort {f['abort_status']}@{f['abort_percent']}%")
    return f"  route {r['name']}: {matches} -> {dests}; " + "; ".join(extras)


def explain_text(doc: dict[str, Any]) -> str:
    dst, rules = doc["destination"], doc["rules"]
    lines = [f"pod {doc['pod']} ({doc['pod_ip']}) -> {dst['input']} = {dst['ip']}:{dst['port']}",
             f"rules:    live rules {rules['live']}",
             f"          uid {rules['uid']}, out {rules['out_interface']}: "
             + " -> ".join(f"{s['chain']} [{s['rule']}] {s['target']}" for s in rules["path"]),
             f"          {'CAPTURED' if rules['captured'] else 'NOT CAPTURED'} by {rules['chain']} "
             f"[{rules['rule']}]" + (f" to port {rules['target_port']}" if rules["target_port"] else "")]
    if doc["listener"]:
        lines.append(f"listener: {doc['listener']['port']} ({doc['listener']['name']})")
        lines.append(f"config:   {doc['config_source']}")
    side = doc.get("sidecar") or {}
    if side.get("kind") == "service":
        s = side["service"]
        lines.append(f"service:  {s['name']} VIP {s['vip']}:{s['port']} -> target port {s['target_port']}, "
                     f"lb {s['lb']}")
        lines += [_route_line(r) for r in s["routes"]]
        lines += [f"  endpoint {e['pod']} {e['ip']} {e['labels'] or ''} health {e['health']}" for e in s["endpoints"]]
        b = s["breaker"]
        lines.append(f"  breaker: max connections {b['max_connections']}, pending {b['max_pending_requests']}, "
                     f"requests {b['max_requests']}; connect timeout {b['connect_timeout_s']}s")
        o = s["outlier"]
        lines.append(f"  outlier: {'on' if o['enabled'] else 'off'}, eject after {o['consecutive_5xx']} 5xx "
                     f"for {o['base_ejection_s']}s, max {o['max_ejection_percent']}%")
    elif side.get("kind") == "pod":
        lines.append(f"target:   pod {side['pod']}: plain L4 relay")
    elif side.get("kind"):
        lines.append(f"target:   {side['kind']}")
    lines.append(f"mtls:     {doc['mtls']}")
    lines.append(f"verdict:  {doc['verdict']}")
    return "\n".join(lines)
