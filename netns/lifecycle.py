"""Pod lifecycle: create (all or nothing), delete, and the shared teardown gc reuses.

create, step by step (the registry row comes first, so gc can always find what a killed
create left behind, and every later step is undone by the same idempotent teardown):

    1. reserve the row (state creating, owner = this pid) and an address   [registry txn]
    2. mark the namespace as ours, write /etc/netns/<netns> and the pod's config files (before
       any kernel change: a full state directory fails here, with nothing to undo in the kernel)
    3. start the supervisor, gated: it launches the sidecar process and issues the certificate
       meanwhile (their start-up overlaps steps 4-6), but the sidecar gets its config (and
       enters the namespace, and binds) only when the gate opens in 6
    4. make sure the bridge and the host forward guard exist, reserve the service VIPs [mesh lock]
    5. create namespace + veth, configure the pod side
    6. the init step: apply the interception rules in the pod, read them back, compare to plan;
       write the pod's own hosts file and snapshot; open the gate: sidecar, validation probes, app
    7. mark the row ready (the point of no return), publish: every pod's hosts file and snapshot
       now has the new pod, and it is an endpoint of its services

Each step boundary has a crash point (netns/crashpoints.py, a test hook): the crash tests kill
meshns right after every step and check that gc cleans up.
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
from typing import TYPE_CHECKING

from meshns.config import MeshConfig
from meshns.errors import (
    ConflictError,
    MeshnsError,
    NoSpaceError,
    NotFoundError,
    RegistryError,
    SystemFailure,
    UserError,
)
from meshns.intercept.plan import RulePlan, plan_rules
from meshns.intercept.render import render_save
from meshns.intercept.spec import InterceptSpec
from meshns.model import PodRecord, PodSpec, PodState, identity_of
from meshns.names import netns_name, validate_pod_name, veth_host_name
from meshns.netns import files, hostguard, ipam, procs, supervisor, validate
from meshns.netns.crashpoints import crash_point
from meshns.netns.plan import ConfigurePod, CreateNetns, CreateVethPair, PodNetPlan, plan_pod_network, render_plan
from meshns.netns.publish import ca_trust_domain, publish
from meshns.netns.statefile import read_state
from meshns.ports import METRICS_PORT
from meshns.statefs import state_writes
from meshns.trace import mark

if TYPE_CHECKING:
    from meshns.mesh import Mesh

# The kernel-facing executors (pyroute2: meshns.netns.apply; python-iptables:
# meshns.intercept.apply), the CA (cryptography) and the compiler are imported inside the
# functions that use them: status, list and explain import this module for its small helpers.

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
        "# host forward guard (once per bridge)\n"
        + "\n".join(hostguard.render_guard(cfg.bridge, cfg.cluster_cidr)) + "\n",
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
    crash_point("create:row-reserved")
    # From here on the row exists, so a teardown of another pod (which checks for rows under the
    # mesh lock) cannot remove the bridge under us, and any failure is undone by teardown.
    try:
        files.prepare_pod_dir(record.netns, mesh.cfg.state_dir)
        crash_point("create:pod-files-marked")
        _write_pod_config(mesh, record, ready_timeout_s)
        crash_point("create:pod-config-written")
        # The supervisor starts now, in parallel with the rest: it launches the sidecar process
        # (interpreter and imports: the longest part of create) and issues the certificate, but
        # the sidecar gets its config, enters the namespace and binds only after the gate says
        # "go", which _build writes once the rules are applied and checked.
        proc, gate = _spawn_supervisor(mesh, record)
        try:
            crash_point("create:supervisor-started")
            from meshns.netns import apply

            mark("create:apply-imported")
            with mesh.locked():
                apply.ensure_bridge(mesh.cfg.bridge, ipam.gateway_interface(mesh.cfg.pod_cidr))
                crash_point("create:bridge-ready")
                hostguard.ensure_guard(mesh.cfg.bridge, mesh.cfg.cluster_cidr)
                crash_point("create:guard-installed")

                def vip(used: set[IPv4Address]) -> IPv4Address:
                    return ipam.allocate(mesh.cfg.service_cidr, used)

                for svc, ports in _service_ports(spec).items():
                    mesh.registry.ensure_service(svc, ports, vip)
                crash_point("create:services-reserved")
            net = plan_pod_network(mesh.cfg, name, record.ip, ns, veth)
            _build(mesh, record, net, rules, gate)
        finally:
            os.close(gate)  # without "go" first, the supervisor sees EOF and gives up
        state = _wait_running(mesh, record, proc, ready_timeout_s + 5.0)
        if spec.app:
            targets = tuple(sorted({d.target_port for d in spec.services}))
            validate.wait_app_serving(record.netns, record.ip, targets, ready_timeout_s)
        crash_point("create:app-serving")
        mesh.registry.set_state(name, PodState.READY, None)
        crash_point("create:marked-ready")
        publish(mesh)  # the new pod becomes an endpoint of its services everywhere
        crash_point("create:published")
    except BaseException as exc:
        _roll_back(mesh, record, exc)
        raise
    ready = mesh.registry.get_pod(name)
    assert ready is not None
    return CreateResult(ready, time.monotonic() - started, state)


def _roll_back(mesh: Mesh, record: PodRecord, exc: BaseException) -> None:
    """Undo a failed create; a rollback that fails too is reported with the first error.
    Storage trouble (a full disk) keeps the first error's class and exit code."""
    try:
        remaining = teardown(mesh, record)
    except MeshnsError as cleanup_exc:
        message = f"{exc}; and rollback failed: {cleanup_exc} (run meshns gc)"
        if isinstance(exc, RegistryError) and isinstance(cleanup_exc, RegistryError):
            raise type(exc)(message) from exc
        raise SystemFailure(message) from exc
    if not remaining:
        return
    try:
        publish(mesh)
    except MeshnsError as publish_exc:
        # Everything of the pod is gone; only the other pods' views could not be rewritten
        # (the same full disk, usually). gc rewrites them once the cause is fixed.
        if isinstance(exc, NoSpaceError) and isinstance(publish_exc, NoSpaceError):
            raise NoSpaceError(f"{exc}; the pod was rolled back ('meshns gc' rewrites the other pods' "
                               "snapshots once there is space)") from exc
        message = (f"{exc}; the pod was rolled back, but the other pods' hosts files and snapshots could not "
                   f"be rewritten ({publish_exc}): 'meshns gc' does it once that is fixed")
        if isinstance(exc, RegistryError) and isinstance(publish_exc, RegistryError):
            raise type(exc)(message) from exc
        raise SystemFailure(message) from exc


def _build(mesh: Mesh, record: PodRecord, net: PodNetPlan, rules: RulePlan, gate: int) -> None:
    """The pod's network and its rules, then "go" on the supervisor's gate."""
    from meshns.intercept.apply import apply_in_netns, read_installed_in_netns
    from meshns.netns import apply

    for step in net.steps:  # one at a time, for a crash point after each (the bridge was ensured before)
        apply.apply_plan(PodNetPlan(net.pod, (step,)))
        match step:
            case CreateNetns():
                crash_point("create:netns-added")
            case CreateVethPair():
                crash_point("create:veth-added")
            case ConfigurePod():
                crash_point("create:pod-addressed")
    mark("create:iptc-imported")
    apply_in_netns(record.netns, rules)
    mark("create:rules-in")
    installed = read_installed_in_netns(record.netns)
    if installed != render_save(rules):
        raise SystemFailure("interception rules read back from the kernel differ from the plan")
    crash_point("create:rules-applied")
    # The new pod's hosts file and first snapshot, before its sidecar starts serving. The other
    # pods learn of it in the publish after it is ready (create's last step), which rewrites every
    # pod's files anyway: rewriting them here too made the path to the gate grow with the number
    # of pods (about 1.7 ms of file writes and compile per pod, 150-200 ms at 100 pods), and set
    # every sidecar reloading a snapshot that changed again a moment later. Nothing of the new pod
    # is reachable by name before then, and its app starts only after its own probes pass.
    publish(mesh, only=record.name)
    crash_point("create:first-published")
    _open_gate(gate)
    mark("create:gate-open")


def _write_pod_config(mesh: Mesh, record: PodRecord, ready_timeout_s: float) -> None:
    pod_dir = mesh.cfg.pod_dir(record.name)
    with state_writes(mesh.cfg.state_dir, f"writing pods/{record.name}"):
        pod_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        # The mesh CA is made on first use; the supervisor issues the pod's certificate from it.
        # Once it exists, its trust domain is all create needs (without the CA's code).
        trust_domain = ca_trust_domain(mesh.cfg.ca_dir)
        if trust_domain is None:
            from meshns.mtls.ca import CertAuthority

            trust_domain = CertAuthority.ensure(mesh.cfg.ca_dir).trust_domain
        identity = {"ca_dir": str(mesh.cfg.ca_dir), "spiffe": identity_of(record, trust_domain),
                    "ttl_s": record.spec.cert_ttl_s}
        _write_json(pod_dir / "sidecar.json", {"pod": record.name, "pod_ip": str(record.ip),
                                               "http_parser": record.spec.http_parser,
                                               "drain_timeout_s": record.spec.drain_timeout_s,
                                               "max_request_body_bytes": record.spec.max_request_body_bytes,
                                               "request_headers_timeout_s": record.spec.request_headers_timeout_s,
                                               "metrics_port": METRICS_PORT})
        _write_json(pod_dir / "supervisor.json", {
            "pod": record.name, "netns": record.netns, "pod_ip": str(record.ip),
            "gateway": str(ipam.gateway(mesh.cfg.pod_cidr)), "app": list(record.spec.app),
            "ready_timeout_s": ready_timeout_s, "identity": identity,
        })


def _write_json(path: os.PathLike[str], data: dict[str, object]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.chmod(path, 0o644)


def _spawn_supervisor(mesh: Mesh, record: PodRecord) -> tuple[subprocess.Popen[bytes], int]:
    """Start the pod's supervisor, detached, holding back the sidecar until the gate opens;
    returns the process and our end of the gate pipe."""
    pod_dir = mesh.cfg.pod_dir(record.name)
    gate_r, gate_w = os.pipe()
    try:
        with state_writes(mesh.cfg.state_dir, f"opening pods/{record.name}/pod.log"), \
                open(pod_dir / "pod.log", "ab") as log:
            proc = subprocess.Popen(
                supervisor.command(mesh.cfg.state_dir, record.name, gate_r),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
                pass_fds=(gate_r,),
            )
    except BaseException:
        os.close(gate_w)
        raise
    finally:
        os.close(gate_r)
    return proc, gate_w


def _open_gate(gate: int) -> None:
    with contextlib.suppress(BrokenPipeError):  # the supervisor is gone: _wait_running says how it ended
        os.write(gate, supervisor.GATE_GO)


def _wait_running(mesh: Mesh, record: PodRecord, proc: subprocess.Popen[bytes], wait_s: float) -> dict[str, object]:
    pod_dir = mesh.cfg.pod_dir(record.name)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        state = read_state(mesh, record.name)
        phase = state.get("phase")
        if phase == "running":
            crash_point("create:supervisor-running")
            return state
        if phase == "failed":
            raise SystemFailure(f"pod {record.name}: {state.get('error')} (log: {pod_dir / 'pod.log'})")
        if proc.poll() is not None:
            raise SystemFailure(f"pod {record.name}: supervisor exited with {proc.returncode} "
                                f"(log: {pod_dir / 'pod.log'})")
        time.sleep(0.005)
    raise SystemFailure(f"pod {record.name}: not ready after {wait_s:.0f} s (log: {pod_dir / 'pod.log'})")


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
    crash_point("delete:marked-deleting")
    if record.spec.services and record.state == PodState.READY:
        # Take the pod out of its services first and give every sidecar time to load that
        # (they poll every 0.2 s), so no new request is sent to an app that is stopping.
        try:
            publish(mesh)
        except NoSpaceError:
            # Deleting pods is how an operator frees a full state directory: go on without the
            # grace period (the clients' retries and outlier detection cover the gap); the
            # republish after teardown, with the pod's files gone, has room again.
            pass
        else:
            time.sleep(ENDPOINT_REMOVAL_GRACE_S)
        crash_point("delete:unpublished")
    if teardown(mesh, record):
        try:
            publish(mesh)  # the other pods forget it
        except RegistryError as exc:
            raise type(exc)(f"{exc}; pod {name} is removed, but the other pods list it until "
                            "'meshns gc' republishes") from exc
        crash_point("delete:republished")


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


def teardown(mesh: Mesh, record: PodRecord) -> bool:
    """Remove everything a pod has, in any state of completion. Idempotent. Returns whether
    other pods remain: their hosts files and snapshots then still name this pod, and the caller
    republishes (gc once for all the pods it removed)."""
    from meshns.netns import apply

    stop_supervisors(mesh, record.name, record.spec.drain_timeout_s)
    crash_point("delete:supervisor-stopped")
    # Whatever still runs in the namespace (children the app forked, exec'd shells) goes too:
    # a process left inside would keep the namespace and its veth alive.
    procs.terminate(procs.pids_in_netns(record.netns), 2.0)
    crash_point("delete:pod-processes-stopped")
    apply.delete_link(record.veth)
    crash_point("delete:veth-removed")
    apply.delete_netns(record.netns)
    crash_point("delete:netns-removed")
    files.remove_pod_files(record.netns, mesh.cfg.state_dir)
    crash_point("delete:pod-files-removed")
    shutil.rmtree(mesh.cfg.pod_dir(record.name), ignore_errors=True)
    crash_point("delete:pod-dir-removed")
    # The row goes last: until then gc finds the pod by it and finishes this teardown.
    with mesh.locked():
        mesh.registry.remove_pod(record.name)
        crash_point("delete:row-removed")
        remaining = mesh.registry.list_pods()
        if not remaining:
            remove_bridge(mesh)
            crash_point("delete:bridge-removed")
    return bool(remaining)


def remove_bridge(mesh: Mesh) -> None:
    from meshns.netns import apply

    hostguard.remove_guard(mesh.cfg.bridge)
    apply.delete_link(mesh.cfg.bridge)

