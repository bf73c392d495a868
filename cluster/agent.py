"""The host agent: this host's only etcd client (`python -m meshns.cluster.agent --state-dir D`).

Started by `meshns host join`, it

1. joins: agrees the cluster settings, checks this host's CA belongs to the mesh root (and
   switches a root-holding CA to sign with its own intermediate), claims a pod block with a
   compare-and-create transaction and records it as this host's pod CIDR;
2. registers the host under a lease (TTL from the settings, kept alive every TTL/3) and
   publishes its ready pods under the same lease, so a host that dies vanishes from every other
   host's view within the TTL;
3. lists the mesh's keys once and then watches them (one thread), resuming from the last
   revision after a broken stream and listing again after a compaction;
4. reconciles, whenever the watch moves or the local registry's generation does: other hosts'
   pods into the registry, services they serve, documents and revocations both ways (a
   three-way merge, cluster.sync), routes to the other hosts' blocks; then recompiles the local
   sidecars' snapshots (netns.publish). Sidecars never talk to etcd.

If etcd is unreachable nothing local changes: sidecars keep their last snapshot, and the agent
retries. A lease that expired meanwhile is replaced and everything is published again; the
reconcile is idempotent, so catching up neither loses nor duplicates anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import FrameType
from typing import Any

from meshns.cluster import hostfile, keys, routes, store, view
from meshns.cluster.etcd import Compacted, Etcd, EtcdError, EtcdUnavailable, LeaseExpired, WatchBatch
from meshns.cluster.sync import Value, plan_sync
from meshns.config import ConfigRequest
from meshns.errors import MeshnsError
from meshns.mesh import Mesh
from meshns.mtls.ca import CertAuthority
from meshns.netns import hostguard, ipam
from meshns.netns.publish import publish
from meshns.registry import ConfigRow

log = logging.getLogger("meshns.agent")

_IMPORT_FIRST = ("this host's CA is not the mesh's: run `meshns ca intermediate --host NAME --out DIR` on "
                 "the host holding the mesh root, then `meshns ca import-intermediate DIR` here, then join")
RETRY_S = 0.5
STATUS_EVERY_S = 2.0
FULL_RECONCILE_S = 5.0


@dataclass
class Listing:
    kvs: dict[str, bytes]
    revision: int


def fold(view: dict[str, bytes], revision: int, item: Listing | WatchBatch) -> tuple[dict[str, bytes], int]:
    """The view after one item from the watcher: a listing replaces it, a batch moves it on."""
    if isinstance(item, Listing):
        return dict(item.kvs), item.revision
    for ev in item.events:
        if ev.type == "DELETE":
            view.pop(ev.kv.key, None)
        else:
            view[ev.kv.key] = ev.kv.value
    return view, max(revision, item.revision)


class Watcher(threading.Thread):
    """List once, then watch; hands listings and batches to the main loop through a queue.
    ``resume_from`` starts with a watch from that revision instead of a listing (a watcher
    that remembered where it was); a compacted revision makes it list instead."""

    def __init__(self, etcd: Etcd, prefix: str, out: queue.Queue[Listing | WatchBatch],
                 resume_from: int = 0) -> None:
        super().__init__(name="watch", daemon=True)
        self.etcd, self.prefix, self.out = etcd, prefix, out
        self.stop = threading.Event()
        self.resume_from = resume_from

    def run(self) -> None:
        listed, resume = self.resume_from > 0, self.resume_from
        while not self.stop.is_set():
            try:
                if not listed:
                    kvs, rev = self.etcd.get_prefix(self.prefix)
                    self.out.put(Listing({kv.key: kv.value for kv in kvs}, rev))
                    listed, resume = True, rev + 1
                for batch in self.etcd.watch(self.prefix, resume, self.stop):
                    # Not batch.revision + 1: a watcher behind by a backlog gets its events in
                    # pieces, each stamped with the store's current revision.
                    resume = batch.next_revision
                    if batch.events:
                        self.out.put(batch)
            except Compacted as exc:
                log.warning("watch: revision %d compacted (now %d); listing again", resume, exc.compact_revision)
                listed = False
            except EtcdError as exc:
                log.warning("watch: %s; resuming from revision %d", exc, resume)
                self.stop.wait(RETRY_S)


class Agent:
    def __init__(self, state_dir: Path) -> None:
        settings = hostfile.load_settings(state_dir)
        if settings is None:
            raise MeshnsError(f"{state_dir}: not joined (no host settings)")
        self.state_dir = state_dir
        self.s = settings
        # A call must not outlast the lease it keeps alive: with a short TTL a member that went
        # silent mid-call would otherwise cost the host its lease.
        self.etcd = Etcd(list(settings.endpoints), timeout_s=min(5.0, max(1.0, settings.ttl_s / 3)))
        self.prefix = keys.mesh_prefix(settings.mesh)
        self.view: dict[str, bytes] = {}
        self.revision = 0
        self.listed = False
        self.lease = 0
        self.published: dict[str, bytes] = {}
        self.block: IPv4Network | None = None
        self.connected = False
        self._open: Mesh | None = None
        self.dirty = False  # the registry changed and the sidecars have not been given it yet
        self.error = ""
        self.stopping = threading.Event()
        self.inbox: queue.Queue[Listing | WatchBatch] = queue.Queue()
        self.base = self._load_base()
        self._last_status = ""

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> int:
        self._status("joining")
        while not self.stopping.is_set():
            try:
                self.join()
                break
            except EtcdUnavailable as exc:
                self._status("joining", f"etcd unreachable: {exc}")
                self.stopping.wait(RETRY_S)
            except MeshnsError as exc:
                self._status("error", str(exc))
                log.error("join failed: %s", exc)
                return 3
        watcher = Watcher(self.etcd, self.prefix, self.inbox)
        watcher.start()
        last_gen, next_keepalive, next_full, next_status = -1, 0.0, 0.0, 0.0
        try:
            while not self.stopping.is_set():
                try:
                    if not self.lease:
                        self._register()
                        next_keepalive = time.monotonic() + self.s.ttl_s / 3
                    if time.monotonic() >= next_keepalive:
                        self.etcd.lease_keepalive(self.lease)
                        next_keepalive = time.monotonic() + self.s.ttl_s / 3
                    self.connected, self.error = True, ""
                except LeaseExpired:
                    log.warning("lease %x expired; registering again", self.lease)
                    self.lease = 0
                    continue
                except EtcdError as exc:
                    if self.connected:
                        log.warning("etcd: %s; sidecars keep their snapshots, retrying", exc)
                    self.connected, self.error = False, str(exc)
                    next_keepalive = time.monotonic() + RETRY_S
                moved = self._drain(timeout=0.2)
                gen = self._registry_generation()
                now = time.monotonic()
                if self.listed and (moved or gen != last_gen or now >= next_full):
                    try:
                        self.reconcile()
                        last_gen = self._registry_generation()
                        next_full = now + FULL_RECONCILE_S
                    except EtcdError as exc:
                        self.connected, self.error = False, str(exc)
                    except MeshnsError as exc:
                        log.error("reconcile: %s", exc)
                        self.error = str(exc)
                        last_gen, next_full = self._registry_generation(), now + FULL_RECONCILE_S
                if now >= next_status or moved:
                    self._status("joined")
                    next_status = now + STATUS_EVERY_S
        finally:
            watcher.stop.set()
            self._shutdown()
        return 0

    def _drain(self, timeout: float) -> bool:
        moved = False
        try:
            item = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return False
        while True:
            moved = True
            self.view, self.revision = fold(self.view, self.revision, item)
            self.listed = True
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return moved

    # -- join ---------------------------------------------------------------------------------
    def join(self) -> None:
        mesh = self._mesh()
        try:
            if not CertAuthority.exists(mesh.cfg.ca_dir) and self.etcd.get(keys.trust_bundle_key(self.s.mesh)):
                # Making a CA here would make a second root nobody trusts: refuse before that.
                raise MeshnsError(_IMPORT_FIRST)
            ca = CertAuthority.ensure(mesh.cfg.ca_dir)
            settings = store.ensure_cluster(self.etcd, self.s.mesh, IPv4Network(self.s.cluster_cidr),
                                            self.s.block_prefix, ca.trust_domain)
            self._check_trust(ca)
            pods = mesh.registry.list_pods()
            want = IPv4Network(self.s.want_block) if self.s.want_block else None
            if pods and want is None:
                want = mesh.cfg.pod_cidr  # the pods' addresses must stay inside the block
            self.block = store.claim_block(self.etcd, self.s.mesh, self.s.name, settings, want)
            record = {"pod_cidr": str(self.block), "cluster_cidr": str(settings.cluster_cidr)}
            if mesh.registry.get_meta().get("pod_cidr") != record["pod_cidr"] or \
                    mesh.registry.get_meta().get("cluster_cidr") != record["cluster_cidr"]:
                mesh.registry.set_meta(record)
            _enable_forwarding()
            if pods:
                # The bridge exists: let its guard pass traffic to and from the other blocks.
                hostguard.ensure_guard(mesh.cfg.bridge, settings.cluster_cidr)
            self._own_intermediate(ca)
        finally:
            mesh.close()
        log.info("joined mesh %s as %s with block %s", self.s.mesh, self.s.name, self.block)

    def _check_trust(self, ca: CertAuthority) -> None:
        """One trust domain, one root: the first host publishes its roots (public certificates
        only), every later host must already trust exactly those."""
        key = keys.trust_bundle_key(self.s.mesh)
        mine = ca.bundle_pem()
        if self.etcd.create(key, mine.encode()):
            return
        have = self.etcd.get(key)
        if have is None or _cert_set(have.value.decode()) == _cert_set(mine):
            return
        if ca.holds_root() and _cert_set(have.value.decode()) < _cert_set(mine):
            # The root holder began a rotation (its bundle gained a root): it republishes.
            self.etcd.put(key, mine.encode())
            return
        raise MeshnsError(_IMPORT_FIRST)

    def _own_intermediate(self, ca: CertAuthority) -> None:
        if ca.holds_root() and not ca.has_intermediate():
            ca.use_own_intermediate(self.s.name)

    def _register(self) -> None:
        assert self.block is not None
        self.lease = self.etcd.lease_grant(self.s.ttl_s)
        store.register_host(self.etcd, self.s.mesh, {
            "name": self.s.name, "address": self.s.address, "pod_cidr": str(self.block),
            "joined_at": time.time(), "agent_pid": os.getpid(),
        }, self.lease)
        self.published = {}  # the old lease took our pod keys with it
        log.info("registered under lease %x (ttl %d s)", self.lease, self.s.ttl_s)

    # -- reconcile ----------------------------------------------------------------------------
    def reconcile(self) -> None:
        mesh = self._registry()
        changed = self._publish_own(mesh)
        reg = mesh.registry
        remote = view.remote_pods(self.view, self.s.mesh, self.s.name)
        local_changed = reg.replace_remote_pods(remote)

        def vip(used: set[IPv4Address]) -> IPv4Address:
            return ipam.allocate(mesh.cfg.service_cidr, used)

        have = {s.name: s for s in reg.list_services()}
        for name, ports in _served(remote).items():
            if name not in have or not set(ports) <= set(have[name].ports):
                try:
                    reg.ensure_service(name, tuple(sorted(ports)), vip)
                    local_changed = True
                except MeshnsError as exc:  # e.g. a port mapped differently here
                    log.warning("service %s from other hosts: %s", name, exc)
        local_changed |= self._sync_configs(mesh)
        local_changed |= self._sync_revoked(mesh)
        # Remembered until a publish succeeds: a publish that fails (the mesh lock held past
        # the wait, a full disk) is retried, though the registry has the change already.
        self.dirty |= local_changed
        if self.dirty:
            publish(mesh)
            self.dirty = False
        if routes.sync(view.routes(self.view, self.s.mesh, self.s.name)):
            log.info("routes: %s", {str(k): str(v) for k, v in routes.installed().items()})
        if changed or local_changed:
            self._save_base()

    def _publish_own(self, mesh: Mesh) -> bool:
        want = view.own_pods(mesh.registry.list_pods(), self.s.mesh, self.s.name)
        changed = False
        for key, value in want.items():
            if self.published.get(key) != value:
                self.etcd.put(key, value, lease=self.lease)
                self.published[key] = value
                changed = True
        mine = keys.pods_prefix(self.s.mesh, self.s.name)
        stale = ({k for k in self.view if k.startswith(mine)} | set(self.published)) - want.keys()
        for key in stale:
            self.etcd.delete(key)
            self.published.pop(key, None)
            changed = True
        return changed

    def _sync_configs(self, mesh: Mesh) -> bool:
        reg = mesh.registry
        base = {tuple(k.split("\0")): v for k, v in self.base.get("configs", {}).items()}
        plan = plan_sync(view.local_configs(reg.list_configs()), view.remote_configs(self.view, self.s.mesh),
                         base)
        # Each push is folded into the view at once: the watch echoes it later, and a reconcile
        # before that would otherwise see "etcd lacks what we agreed on" and undo it here.
        for key, value in plan.push_put.items():
            k, v = keys.config_key(self.s.mesh, *key), view.config_value(value)
            self.etcd.put(k, v)
            self.view[k] = v
        for key in plan.push_delete:
            k = keys.config_key(self.s.mesh, *key)
            self.etcd.delete(k)
            self.view.pop(k, None)
        if plan.pulls:
            rows = [ConfigRow(k[0], k[1], k[2], v.text, v.stamp) for k, v in plan.pull_put.items()]
            reg.restore_configs(rows, list(plan.pull_delete))
            log.info("config from other hosts: %d put, %d deleted", len(rows), len(plan.pull_delete))
        self.base["configs"] = {"\0".join(k): v for k, v in plan.base.items()}
        return plan.pulls

    def _sync_revoked(self, mesh: Mesh) -> bool:
        reg = mesh.registry
        local = {i: Value("revoked") for i in reg.list_revoked()}
        plan = plan_sync(local, view.remote_revoked(self.view, self.s.mesh), self.base.get("revoked", {}))
        for ident in plan.push_put:  # folded into the view at once, as for documents
            self.etcd.put(keys.revoked_key(self.s.mesh, ident), b"")
            self.view[keys.revoked_key(self.s.mesh, ident)] = b""
        for ident in plan.push_delete:
            self.etcd.delete(keys.revoked_key(self.s.mesh, ident))
            self.view.pop(keys.revoked_key(self.s.mesh, ident), None)
        for ident in plan.pull_put:
            reg.revoke(ident)
        for ident in plan.pull_delete:
            reg.unrevoke(ident)
        self.base["revoked"] = dict(plan.base)
        return plan.pulls

    # -- state --------------------------------------------------------------------------------
    def _mesh(self) -> Mesh:
        return Mesh.open(ConfigRequest(state_dir=str(self.state_dir)).with_env(), record=False)

    def _registry(self) -> Mesh:
        """One handle for the agent's life once joined (join changes the recorded pod CIDR, so it
        reads the mesh afresh): the loop checks the generation five times a second."""
        if self._open is None:
            self._open = self._mesh()
        return self._open

    def _drop_registry(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None

    def _registry_generation(self) -> int:
        try:
            return self._registry().registry.generation()
        except MeshnsError:
            self._drop_registry()  # opened again next time
            return -1

    def _load_base(self) -> dict[str, Any]:
        try:
            raw = json.loads((hostfile.host_dir(self.state_dir) / "base.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return raw if isinstance(raw, dict) else {}

    def _save_base(self) -> None:
        hostfile.write_json(hostfile.host_dir(self.state_dir) / "base.json", json.dumps(self.base, sort_keys=True))

    def _status(self, state: str, error: str = "") -> None:
        hosts = view.hosts(self.view, self.s.mesh)
        counts: dict[str, int] = {}
        for key in self.view:
            hp = keys.parse_pod_key(self.s.mesh, key)
            if hp is not None:
                counts[hp[0]] = counts.get(hp[0], 0) + 1
        status = {
            "state": state, "pid": os.getpid(), "host": self.s.name, "mesh": self.s.mesh,
            "block": str(self.block) if self.block else None, "connected": self.connected,
            "error": error or self.error, "revision": self.revision, "lease": self.lease,
            "hosts": [{"name": n, "address": h.get("address"), "pod_cidr": h.get("pod_cidr"),
                       "pods": counts.get(n, 0), "self": n == self.s.name} for n, h in sorted(hosts.items())],
        }
        text = json.dumps(status, sort_keys=True)
        if text != self._last_status:
            status["updated_at"] = time.time()
            hostfile.write_status(self.state_dir, status)
            self._last_status = text

    def _shutdown(self) -> None:
        leaving = (hostfile.host_dir(self.state_dir) / "leave").exists()
        try:
            if self.lease:
                self.etcd.lease_revoke(self.lease)  # the others see this host go now, not in TTL
            if leaving:
                store.release_block(self.etcd, self.s.mesh, self.s.name)
        except EtcdError as exc:
            log.warning("leaving: %s (the lease expires by itself)", exc)
        routes.remove_all()
        if leaving:
            mesh = self._mesh()
            try:
                mesh.registry.replace_remote_pods([])
                mesh.registry.set_meta({}, remove=("cluster_cidr",))
                if mesh.registry.list_pods():
                    hostguard.remove_guard(mesh.cfg.bridge)
                    hostguard.ensure_guard(mesh.cfg.bridge, None)
                publish(mesh)
            finally:
                mesh.close()
        self._drop_registry()
        self._status("left" if leaving else "stopped")


def _enable_forwarding() -> None:
    """Pods on other hosts are reached through this host: it must forward (as for Kubernetes
    nodes; the bridge's guard still keeps pod traffic inside the cluster CIDR)."""
    path = Path("/proc/sys/net/ipv4/ip_forward")
    if path.read_text().strip() != "1":
        path.write_text("1\n")
        log.info("enabled net.ipv4.ip_forward: pods on other hosts are routed through this host")


def _served(remote: list[Any]) -> dict[str, set[tuple[int, int]]]:
    out: dict[str, set[tuple[int, int]]] = {}
    for r in remote:
        for d in r.spec.services:
            out.setdefault(d.service, set()).add((d.port, d.target_port))
    return out


def _cert_set(pem: str) -> frozenset[str]:
    marker = "-----END CERTIFICATE-----"
    return frozenset(p.strip() + "\n" + marker for p in pem.split(marker) if p.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshns-agent")
    parser.add_argument("--state-dir", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    agent = Agent(Path(args.state_dir))

    def stop(_sig: int, _frame: FrameType | None) -> None:
        agent.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
