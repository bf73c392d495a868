"""What ``meshns status`` and ``list`` report, gathered from the registry, the supervisor's
state file, the kernel (rules read back, packet counters) and the sidecar's admin endpoint."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from meshns.errors import MeshnsError
from meshns.intercept.apply import counters_in_netns, read_installed_in_netns
from meshns.intercept.plan import plan_rules
from meshns.intercept.render import render_save
from meshns.mesh import Mesh
from meshns.model import PodRecord
from meshns.netns import apply, procs
from meshns.netns.child import run_in_netns
from meshns.netns.lifecycle import intercept_spec, read_state
from meshns.ports import ADMIN_PORT


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


def detail(mesh: Mesh, record: PodRecord) -> dict[str, Any]:
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
    try:
        installed = read_installed_in_netns(record.netns)
        expected = render_save(plan_rules(intercept_spec(record.spec)))
        out["rules"] = "installed" if installed == expected else "DIFFERENT FROM PLAN"
        out["rule_packets"] = [
            {"chain": chain, "rule": comment, "packets": packets}
            for chain, comment, packets in counters_in_netns(record.netns)
        ]
    except (MeshnsError, OSError) as exc:
        out["rules"] = f"unreadable: {exc}"
    out["sidecar_stats"] = sidecar_stats(record)
    return out
