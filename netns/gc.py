"""gc: remove what a crashed or killed meshns left behind, and nothing else.

What counts as left behind:
- registry rows still 'creating' or 'deleting' whose owner process is gone (a create or delete
  that was killed): finished off with the same teardown delete uses;
- namespaces marked as this state directory's (<state>/netns/<ns>) with no row;
- /etc/netns entries, pod directories, bridge ports and supervisor processes of this mesh
  with no row;
- the bridge and its guard rules, once no pod is left.

Ready pods are left alone unless their namespace is gone (after a reboot); a ready pod whose
supervisor died is reported (status shows it) and left to 'meshns delete'.
"""

from __future__ import annotations

import os
import shutil

from meshns.mesh import Mesh
from meshns.model import PodState
from meshns.names import veth_host_name
from meshns.netns import apply, files, hostguard, procs, supervisor
from meshns.netns.child import netns_path
from meshns.netns.lifecycle import remove_bridge, teardown


def _owner_running(pid: int | None) -> bool:
    if pid is None or pid == os.getpid():
        return False
    return procs.alive(pid) and any("meshns" in w for w in procs.cmdline(pid))


def gc(mesh: Mesh) -> list[str]:
    done: list[str] = []
    for record in mesh.registry.list_pods():
        if record.state == PodState.READY and not os.path.exists(netns_path(record.netns)):
            # The namespace is gone (a reboot empties /run/netns): the pod cannot be running.
            teardown(mesh, record)
            done.append(f"removed pod {record.name}: its namespace no longer exists")
            continue
        if record.state == PodState.READY:
            if not _supervisor_alive(mesh, record.name):
                done.append(f"pod {record.name}: ready but its supervisor is not running "
                            "(left alone; 'meshns delete' removes it)")
            continue
        if _owner_running(record.owner_pid):
            continue  # a create or delete is still at work
        teardown(mesh, record)
        done.append(f"removed half-made pod {record.name} (was {record.state.value})")

    pods = mesh.registry.list_pods()
    known_ns = {p.netns for p in pods}
    state_dir = str(mesh.cfg.state_dir)
    for ns in apply.list_netns():
        ours = files.is_ours(mesh.cfg.state_dir, ns)
        if ns in known_ns or not ns.startswith(mesh.cfg.ns_prefix) or not ours:
            continue
        procs.terminate(procs.pids_in_netns(ns), 2.0)
        apply.delete_link(veth_host_name(ns))
        apply.delete_netns(ns)
        done.append(f"removed orphan namespace {ns}")
        files.remove_pod_files(ns, mesh.cfg.state_dir)
    for ns in files.owned_marks(mesh.cfg.state_dir):
        if ns not in known_ns:
            files.remove_pod_files(ns, mesh.cfg.state_dir)
            done.append(f"removed orphan {files.netns_etc_dir(ns)}")
    known_veths = {p.veth for p in pods}
    for port in apply.bridge_ports(mesh.cfg.bridge):
        if port.startswith("mv") and port not in known_veths:
            apply.delete_link(port)
            done.append(f"removed orphan bridge port {port}")
    known_pods = {p.name for p in pods}
    pods_dir = mesh.cfg.state_dir / "pods"
    if pods_dir.is_dir():
        for entry in sorted(os.listdir(pods_dir)):
            if entry not in known_pods:
                shutil.rmtree(pods_dir / entry, ignore_errors=True)
                done.append(f"removed orphan pod directory {pods_dir / entry}")
    for pid in procs.find_processes(supervisor.SUPERVISOR_MODULE, state_dir):
        words = procs.cmdline(pid)
        pod = words[words.index("--pod") + 1] if "--pod" in words[:-1] else None
        if pod not in known_pods:
            procs.terminate([pid], 5.0)
            done.append(f"stopped orphan supervisor pid {pid} (pod {pod})")
    with mesh.locked():
        bridge = mesh.cfg.bridge
        if not mesh.registry.list_pods() and (apply.link_exists(bridge) or hostguard.guard_installed(bridge)):
            remove_bridge(mesh)
            done.append(f"removed bridge {bridge} and its guard rules (no pods left)")
    return done


def _supervisor_alive(mesh: Mesh, pod: str) -> bool:
    return bool(procs.find_processes(supervisor.SUPERVISOR_MODULE, str(mesh.cfg.state_dir), pod))
