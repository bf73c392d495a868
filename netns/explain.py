"""``meshns explain POD DST:PORT``: what happens to a connection from POD's app, from live state.

Three questions, answered in order, each from what is running rather than from a recompile:
1. the kernel: the rules read back from the pod's nat table are compared with the plan rebuilt
   from the registry, and the plan's OUTPUT path is walked (intercept.evaluate) to find the rule
   that captures or passes the connection;
2. the sidecar: its own snapshot from admin /config_dump (what it runs now), endpoint health from
   /clusters; if the sidecar has no /config_dump, snapshot.json (what it loads) with a note;
3. the destination: a service VIP and port, a pod, or anything else.
The gathering does I/O; ``describe`` and ``verdict`` are pure and table-tested.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from meshns.errors import MeshnsError, NotFoundError, UserError
from meshns.intercept.apply import read_installed
from meshns.intercept.evaluate import Verdict, evaluate_output
from meshns.intercept.plan import plan_rules
from meshns.intercept.render import render_save
from meshns.mesh import Mesh
from meshns.model import PodRecord
from meshns.netns import files
from meshns.netns.child import run_in_netns
from meshns.netns.lifecycle import intercept_spec
from meshns.netns.plan import POD_IFNAME
from meshns.netns.statefile import read_state
from meshns.netns.status import admin_get
from meshns.ports import INBOUND_PORT, OUTBOUND_PORT
from meshns.snapshot import SECURITY_FILE, SNAPSHOT_FILE, Service, Snapshot, combine, snapshot_from_dict

MTLS_NOTE = "plaintext: mTLS not enabled in this mesh yet"
_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")


def parse_dst(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); HOST an IPv4 address or a name. Raises UserError."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise UserError(f"destination {text!r}: expected HOST:PORT")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UserError(f"destination {text!r}: port must be 1-65535")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if not _NAME.match(host):
            raise UserError(f"destination {text!r}: {host!r} is neither an IPv4 address nor a name") from None
    return host, int(port_text)


def resolve(hosts_text: str, host: str) -> str | None:
    """``host`` as the pod's programs would resolve it: an address as is, a name via its hosts
    file (there is no DNS inside a pod)."""
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    for line in hosts_text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and host in words[1:]:
            return words[0]
    return None


def out_interface(dst_ip: str, pod_ip: str) -> str:
    """Where the kernel sends it: the pod's own address and 127/8 are local (lo)."""
    return "lo" if dst_ip == pod_ip or ipaddress.IPv4Address(dst_ip) in _LOOPBACK else POD_IFNAME


def _endpoint_health(clusters: Any, service: str) -> dict[str, dict[str, Any]]:
    """/clusters -> {endpoint ip: its health fields}. Accepts {svc: [...]}, {svc: {endpoints}},
    {"services"|"clusters": [{name, endpoints}]} or a bare list of those."""
    entry: Any = None
    if isinstance(clusters, dict):
        entry = clusters.get(service)
        if entry is None:
            clusters = clusters.get("services") or clusters.get("clusters") or []
    if entry is None and isinstance(clusters, list):
        entry = next((c for c in clusters if isinstance(c, dict) and c.get("name") == service), None)
    if isinstance(entry, dict):
        entry = entry.get("endpoints") or entry.get("hosts") or []
    out: dict[str, dict[str, Any]] = {}
    for e in entry if isinstance(entry, list) else []:
        if isinstance(e, dict):
            addr = str(e.get("ip") or e.get("address") or "").split(":")[0]
            if addr:
                out[addr] = {k: v for k, v in e.items() if k not in ("ip", "address", "pod", "labels")}
    return out


def _service_view(svc: Service, port: int, clusters: Any) -> dict[str, Any]:
    health = _endpoint_health(clusters, svc.name)
    return {
        "name": svc.name, "vip": svc.vip, "port": port, "target_port": svc.target_port(port),
        "lb": svc.lb,
        "routes": [asdict(r) for r in svc.routes],
        "subsets": [asdict(s) for s in svc.subsets],
        "endpoints": [{"pod": e.pod, "ip": e.ip, "labels": dict(e.labels),
                       "health": health.get(e.ip, "unknown" if clusters is None else "not listed")}
                      for e in svc.endpoints],
        "breaker": {"max_connections": svc.pool.max_connections,
                    "max_pending_requests": svc.pool.max_pending_requests,
                    "max_requests": svc.pool.max_requests, "connect_timeout_s": svc.pool.connect_timeout_s},
        "outlier": asdict(svc.outlier),
    }


def describe(snapshot: Snapshot | None, pods: dict[str, str], dst_ip: str, port: int,
             clusters: Any) -> dict[str, Any]:
    """What the sidecar does with a connection it captured for ``dst_ip:port``. ``pods`` maps
    pod addresses to names."""
    if snapshot is not None:
        svc = snapshot.by_dst().get((dst_ip, port))
        if svc is not None:
            return {"kind": "service", "service": _service_view(svc, port, clusters)}
        for s in snapshot.services:
            if s.vip == dst_ip:
                return {"kind": "service-port-missing", "service_name": s.name,
                        "ports": [p.port for p in s.ports]}
    if dst_ip in pods:
        return {"kind": "pod", "pod": pods[dst_ip]}
    return {"kind": "other"}


def verdict(rule: Verdict, dest: dict[str, Any], dst: str) -> str:
    if not rule.captured:
        return f"not captured ({rule.rule.removeprefix('meshns: ')}): the app connects to {dst} directly, " \
               "without the sidecar"
    if rule.target_port == INBOUND_PORT:
        return f"captured to the inbound listener {INBOUND_PORT} ({rule.rule.removeprefix('meshns: ')})"
    kind = dest.get("kind")
    if kind == "service":
        svc = dest["service"]
        healthy = sum(1 for e in svc["endpoints"] if not _unhealthy(e["health"]))
        return (f"captured by the outbound listener {OUTBOUND_PORT}; service {svc['name']} "
                f"(VIP {svc['vip']}:{svc['port']}) -> {len(svc['endpoints'])} endpoint(s), {healthy} usable, "
                f"{svc['lb']}, port {svc['target_port']}; {MTLS_NOTE}")
    if kind == "service-port-missing":
        return (f"captured by the outbound listener {OUTBOUND_PORT}; {dst} is service "
                f"{dest['service_name']}'s VIP but not one of its ports {dest['ports']}: relayed to the VIP "
                "itself, which nothing answers")
    if kind == "pod":
        return f"captured by the outbound listener {OUTBOUND_PORT}; plain L4 relay to pod {dest['pod']} ({dst})"
    return (f"captured by the outbound listener {OUTBOUND_PORT}; L4 relay to {dst}, which is neither a "
            "service nor a pod: nothing routes off the host, so it will fail unless something on the bridge answers")


def _unhealthy(health: Any) -> bool:
    if isinstance(health, dict):
        return bool(health.get("ejected")) or health.get("healthy") is False
    return False


# --- gathering (I/O) ---------------------------------------------------------------------------


def _inside() -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        out["installed"] = read_installed()
    except (MeshnsError, OSError) as exc:
        out["rules_error"] = str(exc)
    for key, path in (("config_dump", "/config_dump"), ("clusters", "/clusters")):
        try:
            out[key] = admin_get(path)
        except OSError as exc:
            out[key] = (0, str(exc).encode())
    return out


def _json(reply: Any) -> Any:
    if not reply or reply[0] != 200:
        return None
    try:
        return json.loads(reply[1])
    except ValueError:
        return None


def _snapshot(mesh: Mesh, record: PodRecord, dump: Any) -> tuple[Snapshot | None, str]:
    if isinstance(dump, dict):
        raw = dump.get("snapshot", dump)
        try:
            snap = snapshot_from_dict(raw)
            return snap, f"sidecar /config_dump (snapshot version {snap.version})"
        except (KeyError, TypeError, ValueError) as exc:
            note = f"sidecar /config_dump unreadable ({exc!r})"
    else:
        note = "sidecar has no /config_dump"
    pod_dir = mesh.cfg.pod_dir(record.name)
    try:
        shared = json.loads((pod_dir / SNAPSHOT_FILE).read_text())
        try:
            own = json.loads((pod_dir / SECURITY_FILE).read_text())
        except FileNotFoundError:
            own = None  # the default Security, as the sidecar takes it
        snap = snapshot_from_dict(combine(shared, own, record.name))
    except (OSError, KeyError, TypeError, ValueError):
        return None, f"{note}; no snapshot.json either"
    return snap, f"snapshot.json version {snap.version} ({note}: what it loads, not necessarily what it runs)"


def _app_uid(mesh: Mesh, pod: str) -> int:
    pid = read_state(mesh, pod).get("app_pid")
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0  # apps are started by root with ip netns exec


def explain(mesh: Mesh, pod: str, target: str) -> dict[str, Any]:
    record = mesh.registry.get_pod(pod)
    if record is None:
        raise NotFoundError(f"pod {pod!r} does not exist")
    host, port = parse_dst(target)
    try:
        hosts = (files.netns_etc_dir(record.netns) / "hosts").read_text()
    except OSError:
        hosts = ""
    dst_ip = resolve(hosts, host)
    if dst_ip is None:
        raise UserError(f"{host!r} is not in pod {pod}'s hosts file (a pod or a service name)")
    plan = plan_rules(intercept_spec(record.spec))
    inside = run_in_netns(record.netns, _inside)
    if "installed" in inside:
        live = "match the plan" if inside["installed"] == render_save(plan) else \
            "DIFFER FROM THE PLAN: the kernel holds other rules than the registry implies; evaluating the plan"
    else:
        live = f"UNREADABLE ({inside.get('rules_error')}); evaluating the plan"
    uid = _app_uid(mesh, pod)
    iface = out_interface(dst_ip, str(record.ip))
    rule = evaluate_output(plan, dst_ip, port, uid, iface)
    snap, source = _snapshot(mesh, record, _json(inside.get("config_dump")))
    pods = {str(p.ip): p.name for p in mesh.registry.list_pods()}
    dest = describe(snap, pods, dst_ip, port, _json(inside.get("clusters")))
    listener = None
    if rule.captured:
        listener = {"port": rule.target_port,
                    "name": "outbound" if rule.target_port == OUTBOUND_PORT else
                    "inbound" if rule.target_port == INBOUND_PORT else "other"}
    return {
        "pod": pod, "pod_ip": str(record.ip),
        "destination": {"input": target, "host": host, "ip": dst_ip, "port": port},
        "rules": {"live": live, "uid": uid, "out_interface": iface, **asdict(rule)},
        "listener": listener,
        "config_source": source if rule.captured else None,
        "sidecar": dest if rule.captured else None,
        "mtls": MTLS_NOTE if rule.captured else "none: the connection bypasses the sidecar",
        "verdict": verdict(rule, dest, f"{dst_ip}:{port}"),
    }
