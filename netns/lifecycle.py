"""Pod lifecycle: create (all or nothing), delete, and the shared teardown gc reuses.

create, step by step (the registry row comes first, so gc can always find what a killed
create left behind, and every later step is undone by the same idempotent teardown):

    1. reserve the row (state creating, owner = this pid) and an address   [registry txn]
    2. make sure the bridge and the host forward guard exist               [mesh lock]
    3. mark /etc/netns/<netns> as ours, create namespace + veth, configure the pod side
    4. the init step: apply the interception rules in the pod, read them back, compare to plan
    5. start the supervisor: sidecar, validation probes, then the app
    6. mark the row ready
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from ipaddress import IPv4Address

from meshns.compiler import identity_of
from meshns.config import MeshConfig
from meshns.errors import ConflictError, MeshnsError, NotFoundError, SystemFailure, UserError
from meshns.intercept.apply import apply_in_netns, read_installed_in_netns
from meshns.intercept.plan import RulePlan, plan_rules
from meshns.intercept.render import render_save
from meshns.intercept.spec import InterceptSpec
from meshns.mesh import Mesh
from meshns.model import PodRecord, PodSpec, PodState
from meshns.mtls.ca import CertAuthority
from meshns.names import netns_name, validate_pod_name, veth_host_name
from meshns.netns import apply, files, hostguard, ipam, procs, supervisor, validate
from meshns.netns.plan import PodNetPlan, plan_pod_network, render_plan
from meshns.netns.publish import publish
from meshns.ports import METRICS_PORT

ENDPOINT_REMOVAL_GRACE_S = 0.6


def intercept_spec(spec: PodSpec) -> InterceptSpec:
    return InterceptSpec(
        exclude_outbound_ports=spec.exclude_outbound_ports,
        exclude_inbound_ports=spec.exclude_inbound_ports,
        exclude_outbound_cidrs=spec.exclude_outbound_cidrs,
    )


@dataclass(frozen=True)
class CreateResult:
    record: PodRecord
    seconds: float
    state: dict[str, object]


def dry_run(cfg: MeshConfig, pods: list[PodRecord], name: str, spec: PodSpec) -> str:
    """What create would do, printed, with nothing changed."""
    validate_pod_name(name)
    rules = plan_rules(intercept_spec(spec))
    if any(p.name == name for p in pods):
        raise ConflictError(f"pod {name!r} already exists")
    ip = ipam.allocate(cfg.pod_cidr, {p.ip for p in pods})
    ns = netns_name(cfg.ns_prefix, name)
    net = plan_pod_network(cfg, name, ip, ns, veth_host_name(ns))
    parts = [
        render_plan(net),
        "# host forward guard (once per bridge)\n" + "\n".join(hostguard.render_guard(cfg.bridge)) + "\n",
        f"# init step: interception rules, applied in {ns} (iptables-legacy-save format)\n"
        + render_save(rules),
        f"# then: sidecar (uid 1337) on 15001/15006, validation probes, then the app: "
        f"{' '.join(spec.app) if spec.app else '(none)'}\n",
    ]
    targets = sorted({d.target_port for d in spec.services})
    if spec.app and targets:
        parts.append(f"# published as a service endpoint once the app accepts on port {', '.join(map(str, targets))}\n")
    return "\n".join(parts)


def create(mesh: Mesh, name: str, spec: PodSpec, ready_timeout_s: float = 10.0) -> CreateResult:
    validate_pod_name(name)
    rules = plan_rules(intercept_spec(spec))  # bad exclusions fail before anything is made
    _check_services(spec)
    started = time.monotonic()
    ns = netns_name(mesh.cfg.ns_prefix, name)
    veth = veth_host_name(ns)
    with mesh.locked():
        record = mesh.registry.reserve_pod(
            name, ns, veth, spec, os.getpid(), lambda used: ipam.allocate(mesh.cfg.pod_cidr, used)
        )
        try:
            apply.ensure_bridge(mesh.cfg.bridge, ipam.gateway_interface(mesh.cfg.pod_cidr))
            hostguard.ensure_guard(mesh.cfg.bridge)
            def vip(used: set[IPv4Address]) -> IPv4Address:
                return ipam.allocate(mesh.cfg.service_cidr, used)

            for svc, ports in _service_ports(spec).items():
                mesh.registry.ensure_service(svc, ports, vip)
        except BaseException:
            mesh.registry.remove_pod(name)
            raise
    try:
        net = plan_pod_network(mesh.cfg, name, record.ip, ns, veth)
        state = _build(mesh, record, net, rules, ready_timeout_s)
        if spec.app:
            targets = tuple(sorted({d.target_port for d in spec.services}))
            validate.wait_app_serving(record.netns, record.ip, targets, ready_timeout_s)
        mesh.registry.set_state(name, PodState.READY, None)
        publish(mesh)  # the new pod becomes an endpoint of its services everywhere
    except BaseException as exc:
        try:
            teardown(mesh, record)
        except MeshnsError as cleanup_exc:
            raise SystemFailure(f"{exc}; and rollback failed: {cleanup_exc} (run meshns gc)") from exc
        raise
    ready = mesh.registry.get_pod(name)
    assert ready is not None
    return CreateResult(ready, time.monotonic() - started, state)


def _build(mesh: Mesh, record: PodRecord, net: PodNetPlan, rules: RulePlan,
           ready_timeout_s: float) -> dict[str, object]:
    files.prepare_pod_dir(record.netns, mesh.cfg.state_dir)
    apply.apply_plan(net)
    apply_in_netns(record.netns, rules)
    installed = read_installed_in_netns(record.netns)
    if installed != render_save(rules):
        raise SystemFailure("interception rules read back from the kernel differ from the plan")
    pod_dir = mesh.cfg.pod_dir(record.name)
    pod_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    # The mesh CA is made on first use; the supervisor issues the pod's certificate from it.
    authority = CertAuthority.ensure(mesh.cfg.ca_dir)
    identity = {"ca_dir": str(mesh.cfg.ca_dir), "spiffe": identity_of(record, authority.trust_domain),
                "ttl_s": record.spec.cert_ttl_s}
    _write_json(pod_dir / "sidecar.json", {"pod": record.name, "pod_ip": str(record.ip),
                                           "http_parser": record.spec.http_parser,
                                           "drain_timeout_s": record.spec.drain_timeout_s,
                                           "metrics_port": METRICS_PORT})
    _write_json(pod_dir / "supervisor.json", {
        "pod": record.name, "netns": record.netns, "pod_ip": str(record.ip),
        "gateway": str(ipam.gateway(mesh.cfg.pod_cidr)), "app": list(record.spec.app),
        "ready_timeout_s": ready_timeout_s, "identity": identity,
    })
    publish(mesh)  # hosts entries and the first snapshot, before the sidecar starts
    return _start_supervisor(mesh, record, ready_timeout_s + 5.0)


def _write_json(path: os.PathLike[str], data: dict[str, object]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.chmod(path, 0o644)


def _start_supervisor(mesh: Mesh, record: PodRecord, wait_s: float) -> dict[str, object]:
    pod_dir = mesh.cfg.pod_dir(record.name)
    with open(pod_dir / "pod.log", "ab") as log:
        proc = subprocess.Popen(
            supervisor.command(mesh.cfg.state_dir, record.name),
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
        )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        state = read_state(mesh, record.name)
        phase = state.get("phase")
        if phase == "running":
            return state
        if phase == "failed":
            raise SystemFailure(f"pod {record.name}: {state.get('error')} (log: {pod_dir / 'pod.log'})")
        if proc.poll() is not None:
            raise SystemFailure(f"pod {record.name}: supervisor exited with {proc.returncode} "
                                f"(log: {pod_dir / 'pod.log'})")
        time.sleep(0.01)
    raise SystemFailure(f"pod {record.name}: not ready after {wait_s:.0f} s (log: {pod_dir / 'pod.log'})")


def read_state(mesh: Mesh, pod: str) -> dict[str, object]:
    try:
        data = json.loads((mesh.cfg.pod_dir(pod) / "state.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _service_ports(spec: PodSpec) -> dict[str, tuple[tuple[int, int], ...]]:
    out: dict[str, list[tuple[int, int]]] = {}
    for d in spec.services:
        out.setdefault(d.service, []).append((d.port, d.target_port))
    return {k: tuple(v) for k, v in out.items()}


def _check_services(spec: PodSpec) -> None:
    seen: dict[tuple[str, int], int] = {}
    for d in spec.services:
        if seen.setdefault((d.service, d.port), d.target_port) != d.target_port:
            raise UserError(f"service {d.service} port {d.port} is given two target ports")


def delete(mesh: Mesh, name: str) -> None:
    record = mesh.registry.get_pod(name)
    if record is None:
        raise NotFoundError(f"pod {name!r} does not exist")
    mesh.registry.set_state(name, PodState.DELETING, os.getpid())
    if record.spec.services and record.state == PodState.READY:
        # Take the pod out of its services first and give every sidecar time to load that
        # (they poll every 0.2 s), so no new request is sent to an app that is stopping.
        publish(mesh)
        time.sleep(ENDPOINT_REMOVAL_GRACE_S)
    teardown(mesh, record)


def stop_supervisors(mesh: Mesh, pod: str,
                     drain_timeout_s: float = supervisor.DEFAULT_DRAIN_TIMEOUT_S) -> None:
    """Stop the pod's supervisor(s) gracefully: it stops the app, then the sidecar (which drains)."""
    pids = procs.find_processes(supervisor.SUPERVISOR_MODULE, str(mesh.cfg.state_dir), pod)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + supervisor.supervisor_stop_s(drain_timeout_s)
    while time.monotonic() < deadline and any(procs.alive(p) for p in pids):
        time.sleep(0.02)
    procs.terminate(pids, 0.0)


def teardown(mesh: Mesh, record: PodRecord) -> None:
    """Remove everything a pod has, in any state of completion. Idempotent."""
    stop_supervisors(mesh, record.name, record.spec.drain_timeout_s)
    # Whatever still runs in the namespace (children the app forked, exec'd shells) goes too:
    # a process left inside would keep the namespace and its veth alive.
    procs.terminate(procs.pids_in_netns(record.netns), 2.0)
    apply.delete_link(record.veth)
    apply.delete_netns(record.netns)
    files.remove_pod_files(record.netns, mesh.cfg.state_dir)
    shutil.rmtree(mesh.cfg.pod_dir(record.name), ignore_errors=True)
    with mesh.locked():
        mesh.registry.remove_pod(record.name)
        remaining = mesh.registry.list_pods()
        if not remaining:
            remove_bridge(mesh)
    if remaining:
        publish(mesh)


def remove_bridge(mesh: Mesh) -> None:
    hostguard.remove_guard(mesh.cfg.bridge)
    apply.delete_link(mesh.cfg.bridge)

