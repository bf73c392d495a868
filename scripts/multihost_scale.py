"""How a pod's snapshot and its recompile grow with a multi-host mesh (measured, not asserted).

Builds registry records in memory for H hosts x P pods per host and S services (each pod serves
one service; one VirtualService + DestinationRule per service, one AuthorizationPolicy per 10
services) and runs the same compile path `netns.publish` runs after every change an agent
applies: security, services, workloads, the mesh-wide snapshot (JSON, encoded once) and each of one
host's pods' own part. No namespaces, no
network: this is the control-plane cost a host pays per change, per its pod count.

    .venv/bin/python scripts/multihost_scale.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from ipaddress import IPv4Network

from meshns.compiler import compile_services, pod_security, security_for, stored_docs, workloads_of
from meshns.model import PodSpec, RemotePod, ServicePortDecl, ServiceRecord
from meshns.registry import ConfigRow
from meshns.snapshot import mesh_json, security_json

TD = "cluster.local"


def build(hosts: int, pods_per_host: int, services: int) -> tuple[list, list[ServiceRecord], list[ConfigRow]]:
    cluster = IPv4Network("10.0.0.0/8")
    blocks = list(cluster.subnets(new_prefix=22))
    pods = []
    n = 0
    for h in range(hosts):
        addrs = blocks[h].hosts()
        for _ in range(pods_per_host):
            svc = f"svc{n % services}"
            spec = PodSpec(labels=(("app", svc), ("version", f"v{n % 3}")),
                           services=(ServicePortDecl(svc, 80, 8080),))
            pods.append(RemotePod(f"h{h}", f"{svc}-{n}", next(addrs), spec).as_record())
            n += 1
    vips = IPv4Network("172.16.0.0/16").hosts()
    svcs = [ServiceRecord(f"svc{i}", next(vips), ((80, 8080),), 0.0) for i in range(services)]
    rows = []
    for i in range(services):
        rows.append(ConfigRow("DestinationRule", "default", f"svc{i}", json.dumps({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": f"svc{i}"},
            "spec": {"host": f"svc{i}", "subsets": [{"name": f"v{k}", "labels": {"version": f"v{k}"}}
                                                    for k in range(3)]}})))
        rows.append(ConfigRow("VirtualService", "default", f"svc{i}", json.dumps({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": f"svc{i}"},
            "spec": {"hosts": [f"svc{i}"], "http": [{"route": [
                {"destination": {"host": f"svc{i}", "subset": "v0"}, "weight": 90},
                {"destination": {"host": f"svc{i}", "subset": "v1"}, "weight": 10}]}]}})))
    for i in range(0, services, 10):
        rows.append(ConfigRow("AuthorizationPolicy", "default", f"allow{i}", json.dumps({
            "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": f"allow{i}"},
            "spec": {"selector": {"matchLabels": {"app": f"svc{i}"}}, "action": "ALLOW",
                     "rules": [{"from": [{"source": {"principals": [f"{TD}/ns/default/sa/svc{i + 1}-*"]}}]}]}})))
    return pods, svcs, rows


def measure(hosts: int, pods_per_host: int, services: int) -> dict[str, float]:
    pods, svcs, rows = build(hosts, pods_per_host, services)
    best = float("inf")
    size = 0
    for _ in range(3):
        t0 = time.perf_counter()
        docs = stored_docs(rows)
        sec = pod_security(pods, docs, TD)
        compiled, _ = compile_services(svcs, pods, docs, sec)
        workloads = workloads_of(pods, sec)
        # One host's publish: the mesh-wide part encoded once (then hard-linked into each of its
        # pods' directories), and each of its pods' own part.
        text = mesh_json(1, compiled, workloads)
        for pod in pods[:pods_per_host]:
            security_json(pod.name, security_for(pod.name, sec, TD, []))
        best = min(best, time.perf_counter() - t0)
        size = len(text)
    return {"hosts": hosts, "pods": len(pods), "services": services, "compile_ms": best * 1000,
            "snapshot_kb": size / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    grid = [(2, 10, 5), (10, 10, 20), (10, 50, 50), (50, 20, 100)]
    if not args.quick:
        grid += [(50, 50, 250), (100, 50, 500)]
    print(f"{'hosts':>6} {'pods':>6} {'services':>9} {'recompile ms (one host)':>24} {'snapshot KB':>12}")
    for h, p, s in grid:
        r = measure(h, p, s)
        print(f"{r['hosts']:>6} {r['pods']:>6} {r['services']:>9} {r['compile_ms']:>24.1f} {r['snapshot_kb']:>12.1f}")


if __name__ == "__main__":
    main()
