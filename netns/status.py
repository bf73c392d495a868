"""What ``meshns status`` and ``list`` report, gathered from the registry, the supervisor's
state file, the kernel (rules read back, packet counters) and the sidecar's admin endpoint."""

from __future__ import annotations

import json
import socket
import time
from typing import TYPE_CHECKING, Any

from meshns.errors import MeshnsError
from meshns.model import PodRecord
from meshns.netns import procs
from meshns.netns.child import run_in_netns
from meshns.netns.statefile import read_state
from meshns.netns.traffic import Scrape, parse_prometheus, pod_traffic, top_pairs
from meshns.ports import ADMIN_PORT

if TYPE_CHECKING:
    from meshns.mesh import Mesh

# list uses summary() only; the kernel readers (python-iptables, pyroute2) and the rule plan are
# imported by the functions that need them.

PROMETHEUS_PATH = "/stats/prometheus"


def admin_get(path: str, port: int = ADMIN_PORT, timeout_s: float = 2.0) -> tuple[int, bytes]:
    """A plain HTTP/1.0 GET to the sidecar's admin port on the pod's localhost."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body


def sidecar_stats(record: PodRecord) -> dict[str, Any] | None:
    try:
        status, body = run_in_netns(record.netns, admin_get, "/stats")
    except (OSError, MeshnsError, ValueError, IndexError):
        return None
    if status != 200:
        return None
    data = json.loads(body)
    return data if isinstance(data, dict) else None


def summary(mesh: Mesh, record: PodRecord) -> dict[str, Any]:
    """The cheap view used by list: no forks into the namespace."""
    state = read_state(mesh, record.name)
    sidecar_pid = state.get("sidecar_pid")
    app_pid = state.get("app_pid")
    return {
        "name": record.name,
        "ip": str(record.ip),
        "state": record.state.value,
        "phase": state.get("phase", "unknown"),
        "sidecar": _proc_state(sidecar_pid),
        "app": state.get("app_state", "unknown") if app_pid is None or procs.alive(int(str(app_pid)))
        else "exited",
        "age_s": round(time.time() - record.created_at, 1),
    }


def _proc_state(pid: object) -> str:
    if not isinstance(pid, int):
        return "none"
    return "running" if procs.alive(pid) else "dead"


def _rules_and_admin() -> dict[str, Any]:
    """Everything status wants from inside the pod, in one child (one fork per pod, not four)."""
    from meshns.intercept.apply import read_installed, rule_counters

    out: dict[str, Any] = {}
    try:
        out["installed"] = read_installed()
        out["counters"] = rule_counters()
    except (MeshnsError, OSError) as exc:
        out["rules_error"] = str(exc)
    for key, path in (("stats", "/stats"), ("prometheus", PROMETHEUS_PATH), ("certs", "/certs")):
        try:
            out[key] = admin_get(path)
        except OSError as exc:
            out[key] = (0, str(exc).encode())
    return out


def scrape(record: PodRecord) -> str | None:
    """The sidecar's Prometheus text, or None when it has none (down, or an older sidecar)."""
    try:
        code, body = run_in_netns(record.netns, admin_get, PROMETHEUS_PATH)
    except (OSError, MeshnsError, ValueError, IndexError):
        return None
    return body.decode("utf-8", "replace") if code == 200 else None


def _json_or_none(reply: tuple[int, bytes] | None) -> Any:
    if reply is None or reply[0] != 200:
        return None
    try:
        return json.loads(reply[1])
    except ValueError:
        return None


def _identity(certs: Any) -> tuple[str | None, str | None]:
    """(identity, expiry) from the sidecar's /certs."""
    if isinstance(certs, dict) and isinstance(certs.get("certificates"), list):
        certs = certs["certificates"]
    if isinstance(certs, list) and certs:
        certs = certs[0]
    if not isinstance(certs, dict):
        return None, None
    ident = certs.get("identity") or certs.get("spiffe_id") or certs.get("uri")
    expiry = certs.get("expires") or certs.get("not_after") or certs.get("expiry")
    return (str(ident) if ident else None), (str(expiry) if expiry else None)


def detail(mesh: Mesh, record: PodRecord, probe: dict[str, Any] | None = None) -> dict[str, Any]:
    from meshns.intercept.plan import plan_rules
    from meshns.intercept.render import render_save
    from meshns.netns import apply
    from meshns.netns.lifecycle import intercept_spec

    if probe is None:
        try:
            probe = run_in_netns(record.netns, _rules_and_admin)
        except (OSError, MeshnsError) as exc:
            probe = {"rules_error": str(exc)}
    state = read_state(mesh, record.name)
    pod_dir = mesh.cfg.pod_dir(record.name)
    out: dict[str, Any] = summary(mesh, record)
    out.update({
        "netns": record.netns,
        "veth": record.veth,
        "veth_present": apply.link_exists(record.veth),
        "bridge": mesh.cfg.bridge,
        "app_command": list(record.spec.app),
        "exclusions": {
            "outbound_ports": list(record.spec.exclude_outbound_ports),
            "inbound_ports": list(record.spec.exclude_inbound_ports),
            "outbound_cidrs": list(record.spec.exclude_outbound_cidrs),
        },
        "supervisor_pid": state.get("supervisor_pid"),
        "sidecar_pid": state.get("sidecar_pid"),
        "sidecar_restarts": state.get("sidecar_restarts", 0),
        "app_pid": state.get("app_pid"),
        "app_exit_code": state.get("app_exit_code"),
        "error": state.get("error"),
        "log": str(pod_dir / "pod.log"),
        "app_log": str(pod_dir / "app.log"),
    })
    if "installed" in probe:
        expected = render_save(plan_rules(intercept_spec(record.spec)))
        out["rules"] = "installed" if probe["installed"] == expected else "DIFFERENT FROM PLAN"
        out["rule_packets"] = [
            {"chain": chain, "rule": comment, "packets": packets}
            for chain, comment, packets in probe["counters"]
        ]
    else:
        out["rules"] = f"unreadable: {probe.get('rules_error')}"
    stats = _json_or_none(probe.get("stats"))
    out["sidecar_stats"] = stats if isinstance(stats, dict) else None
    out["services"] = [f"{d.service}:{d.port}" + (f":{d.target_port}" if d.target_port != d.port else "")
                       for d in record.spec.services]
    # No mTLS yet: the fields are kept so scripts need not change when identities arrive.
    out["identity"], out["cert_expiry"] = _identity(_json_or_none(probe.get("certs")))
    out["traffic"] = None
    return out


def gather(mesh: Mesh, records: list[PodRecord], window_s: float) -> list[dict[str, Any]]:
    """detail() for every pod plus request rates from two scrapes ``window_s`` apart.

    One child per pod for the first look (rules, counters, stats, first scrape), one wait shared
    by all pods, then one child per pod for the second scrape: N pods cost one window, not N.
    """
    first: list[tuple[dict[str, Any], Scrape | None, float]] = []
    for record in records:
        try:
            probe: dict[str, Any] = run_in_netns(record.netns, _rules_and_admin)
        except (OSError, MeshnsError) as exc:
            probe = {"rules_error": str(exc)}
        prom = probe.get("prometheus")
        scraped = parse_prometheus(prom[1].decode("utf-8", "replace")) if prom and prom[0] == 200 else None
        first.append((detail(mesh, record, probe), scraped, time.monotonic()))
    if window_s > 0 and any(s is not None for _, s, _ in first):
        time.sleep(max(0.0, first[0][2] + window_s - time.monotonic()))
        for record, (out, before, t1) in zip(records, first, strict=True):
            if before is None:
                continue
            text = scrape(record)
            if text is not None:
                out["traffic"] = pod_traffic(before, parse_prometheus(text), time.monotonic() - t1).as_dict()
    return [out for out, _, _ in first]


def scrape_all(records: list[PodRecord]) -> dict[str, Scrape]:
    """Every reachable sidecar's metrics, parsed, by pod name (one short child per pod)."""
    out: dict[str, Scrape] = {}
    for record in records:
        text = scrape(record)
        if text is not None:
            out[record.name] = parse_prometheus(text)
    return out


def top_sample(before: dict[str, Scrape], after: dict[str, Scrape], window_s: float) -> dict[str, Any]:
    """One `meshns top` sample: the busiest pairs between two scrape_all results."""
    # A pod missing from the first scrape (just created, sidecar restarting) has no baseline: its
    # counters since start would all be charged to this window, so it waits for the next sample.
    pairs = top_pairs(((before[pod], scraped) for pod, scraped in after.items() if pod in before), window_s)
    return {"window_s": round(window_s, 3), "pods": len(after), "pairs": [p.as_dict() for p in pairs]}
