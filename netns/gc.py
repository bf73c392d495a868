"""gc: remove what a crashed or killed meshns left behind, and nothing else.

What counts as left behind:
- registry rows still 'creating' or 'deleting' whose owner process is gone (a create or delete
  that was killed): finished off with the same teardown delete uses;
- namespaces marked as this state directory's (<state>/netns/<ns>) with no row;
- /etc/netns entries, pod directories, bridge ports and supervisor processes of this mesh
  with no row;
- the bridge and its guard rules, once no pod is left;
- pods whose hosts file or snapshot lags behind the registry (a command killed between its
  registry write and its publish: create after 'ready', delete after the row went, apply -f
  after storing): everything is republished, so every pod sees what the registry says;
- staged snapshot files of a publish that was killed: .snapshot.json.<pid>.tmp and
  .security.json.<pid>.tmp in pod directories, and the shared .snapshot.json.<pid>.tmp in the
  state directory that publish hard-links into them.

gc itself is idempotent and safe to kill: every step is re-done by the next run, so a second
run right after a first always reports nothing to clean.

Ready pods are left alone unless their namespace is gone (after a reboot); a ready pod whose
supervisor died is reported (status shows it) and left to 'meshns delete'.
"""

from __future__ import annotations

import os
import shutil

from meshns.cluster import hostfile, routes
from meshns.mesh import Mesh
from meshns.model import PodRecord, PodState
from meshns.names import veth_host_name
from meshns.netns import apply, files, hostguard, procs, publish, supervisor
from meshns.netns.child import netns_path
from meshns.netns.lifecycle import remove_bridge, teardown

# A process that started this long after the row was last written by its owner is not the owner
# (its pid was reused): /proc gives start times to the clock tick, boot time to the second.
START_SLACK_S = 2.0


def owner_may_be(process_started_at: float | None, row_written_at: float) -> bool:
    """Whether a live process can be the command that wrote the row (pure): the owner writes
    the row after it started, so a process started later only reuses the pid of a killed one."""
    return process_started_at is None or process_started_at <= row_written_at + START_SLACK_S


def _started_at(pid: int) -> float | None:
    """Wall-clock start time of pid, from /proc (None: unknown)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _owner_running(record: PodRecord) -> bool:
    pid = record.owner_pid
    if pid is None or pid == os.getpid():
        return False
    return (procs.alive(pid) and any("meshns" in w for w in procs.cmdline(pid))
            and owner_may_be(_started_at(pid), record.updated_at))


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
        if _owner_running(record):
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
            else:
                done.extend(_remove_staged(pods_dir / entry))
    if mesh.cfg.state_dir.is_dir():
        # Only publish's shared file: the state directory holds other files (the registry's).
        done.extend(_remove_staged(mesh.cfg.state_dir, prefix=f".{publish.SNAPSHOT_FILE}."))
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
    done.extend(_cluster_leftovers(mesh))
    behind = publish.stale(mesh)
    if behind:
        publish.publish(mesh)
        done.append(f"republished hosts files and snapshots (out of date in: {', '.join(behind)})")
    return done


def _cluster_leftovers(mesh: Mesh) -> list[str]:
    """Routes to other hosts' pod blocks outlive a killed agent; once this host is no longer a
    member (no settings: it left, or never joined) nothing should route there any more."""
    if hostfile.load_settings(mesh.cfg.state_dir) is not None or not routes.installed():
        return []
    if procs.find_processes("meshns.cluster.agent"):
        return []  # another mesh's agent on this host owns them (routes carry no mesh name)
    return [f"removed {routes.remove_all()} route(s) to other hosts' pod blocks (not a mesh member)"]


def staged_pid(name: str, prefix: str = ".") -> int | None:
    """The pid of the publish that staged ``name`` (pure): .<file>.<pid>.tmp, e.g.
    .snapshot.json.123.tmp or .security.json.123.tmp; None for any other name."""
    parts = name.split(".")  # .snapshot.json.<pid>.tmp -> ['', 'snapshot', 'json', pid, 'tmp']
    if not name.startswith(prefix) or len(parts) < 4 or parts[-1] != "tmp" or not parts[-2].isdigit():
        return None
    return int(parts[-2])


def _remove_staged(directory: os.PathLike[str], prefix: str = ".") -> list[str]:
    """Temporary snapshot files of a publish that was killed before it renamed them."""
    out = []
    for name in sorted(os.listdir(directory)):
        pid = staged_pid(name, prefix)
        if pid is not None and not procs.alive(pid):
            os.unlink(os.path.join(directory, name))
            out.append(f"removed unfinished {os.path.join(directory, name)}")
    return out


def _supervisor_alive(mesh: Mesh, pod: str) -> bool:
    return bool(procs.find_processes(supervisor.SUPERVISOR_MODULE, str(mesh.cfg.state_dir), pod))
