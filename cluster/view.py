"""What the agent reads out of, and writes into, its in-memory copy of the mesh's etcd keys (pure).

The agent keeps every key under /meshns/<mesh>/ in a dict (listed once, then moved on by the
watch). These functions turn that dict into registry values and back: this host's pods as
etcd values, other hosts' pods as RemotePods, documents and revocations as sync values, and the
routes to the other hosts' pod blocks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from meshns.cluster import keys
from meshns.cluster.sync import Value
from meshns.model import PodRecord, PodSpec, PodState, RemotePod
from meshns.registry import ConfigKey, ConfigRow


def pod_value(pod: PodRecord) -> bytes:
    """What other hosts learn of a ready pod here: never its command line (it may hold secrets)."""
    spec = replace(pod.spec, app=())
    return json.dumps({"name": pod.name, "ip": str(pod.ip), "spec": json.loads(spec.to_json())},
                      sort_keys=True).encode()


def own_pods(pods: list[PodRecord], mesh: str, me: str) -> dict[str, bytes]:
    return {keys.pod_key(mesh, me, p.name): pod_value(p) for p in pods if p.state == PodState.READY}


def hosts(view: Mapping[str, bytes], mesh: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in view.items():
        host = keys.parse_host_key(mesh, key)
        if host is None:
            continue
        try:
            record = json.loads(value)
        except ValueError:
            continue
        if isinstance(record, dict):
            out[host] = record
    return out


def remote_pods(view: Mapping[str, bytes], mesh: str, me: str) -> list[RemotePod]:
    """Other hosts' pods, only of hosts that are alive (their leased host key is there): a pod
    key can outlive its host's record for a moment while a lease expiry is delivered."""
    alive = hosts(view, mesh)
    out = []
    for key, value in view.items():
        hp = keys.parse_pod_key(mesh, key)
        if hp is None or hp[0] == me or hp[0] not in alive:
            continue
        try:
            raw = json.loads(value)
            out.append(RemotePod(hp[0], hp[1], IPv4Address(str(raw["ip"])),
                                 PodSpec.from_json(json.dumps(raw["spec"]))))
        except (ValueError, KeyError, TypeError):
            continue  # a foreign or damaged value is skipped, not fatal to the whole view
    return sorted(out, key=lambda r: (r.host, r.name))


def remote_configs(view: Mapping[str, bytes], mesh: str) -> dict[ConfigKey, Value]:
    out: dict[ConfigKey, Value] = {}
    for key, value in view.items():
        ck = keys.parse_config_key(mesh, key)
        if ck is None:
            continue
        try:
            raw = json.loads(value)
            out[ck] = Value(str(raw["doc"]), float(raw.get("applied_at", 0.0)))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def config_value(v: Value) -> bytes:
    return json.dumps({"doc": v.text, "applied_at": v.stamp}, sort_keys=True).encode()


def local_configs(rows: list[ConfigRow]) -> dict[ConfigKey, Value]:
    return {(r.kind, r.namespace, r.name): Value(r.doc, r.applied_at) for r in rows}


def remote_revoked(view: Mapping[str, bytes], mesh: str) -> dict[str, Value]:
    out: dict[str, Value] = {}
    for key in view:
        ident = keys.parse_revoked_key(mesh, key)
        if ident is not None:
            out[ident] = Value("revoked")
    return out


def routes(view: Mapping[str, bytes], mesh: str, me: str) -> dict[IPv4Network, IPv4Address]:
    """Each live other host's pod block, via that host's address."""
    out: dict[IPv4Network, IPv4Address] = {}
    for name, record in hosts(view, mesh).items():
        if name == me:
            continue
        try:
            out[IPv4Network(str(record["pod_cidr"]))] = IPv4Address(str(record["address"]))
        except (ValueError, KeyError):
            continue
    return out
