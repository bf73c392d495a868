"""The records hosts share through etcd, and the compare-and-set rules that keep them consistent.

- Cluster settings are written once, by whichever host joins first (compare-and-create); every
  later host reads them and must agree with whatever it states explicitly.
- A pod CIDR block belongs to the host whose name its key holds. Claims are compare-and-create
  on the block's key, so two hosts can never hold one block: the loser of a race moves on to the
  next free block (or, if it asked for that exact block, is told who holds it). A host that
  already holds a block gets it back, which also makes a claim safe to retry after an
  EtcdUnavailable whose outcome was unknown.
- Host and pod records are leased by their host agent and disappear when it stops renewing.

Values are JSON; the pod payload is the caller's (this layer stores it as given).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

from meshns.cluster import keys
from meshns.cluster.etcd import Etcd
from meshns.errors import ConflictError, UserError
from meshns.mtls.identity import DEFAULT_TRUST_DOMAIN, validate_trust_domain
from meshns.netns.ipam import MAX_PREFIX, parse_pod_cidr

DEFAULT_CLUSTER_CIDR = IPv4Network("10.188.0.0/16")
DEFAULT_BLOCK_PREFIX = 24


@dataclass(frozen=True)
class ClusterSettings:
    cluster_cidr: IPv4Network
    block_prefix: int
    trust_domain: str
    created_at: float = 0.0

    def __post_init__(self) -> None:
        # Every block becomes a host's pod CIDR, so it has to pass the same check one does.
        parse_pod_cidr(str(self.cluster_cidr))
        if not self.cluster_cidr.prefixlen <= self.block_prefix <= MAX_PREFIX:
            raise UserError(
                f"block size /{self.block_prefix} does not fit the cluster CIDR {self.cluster_cidr}: "
                f"use /{self.cluster_cidr.prefixlen} to /{MAX_PREFIX}"
            )
        validate_trust_domain(self.trust_domain)

    def to_json(self) -> bytes:
        return json.dumps({
            "cluster_cidr": str(self.cluster_cidr), "block_prefix": self.block_prefix,
            "trust_domain": self.trust_domain, "created_at": self.created_at,
        }, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ClusterSettings:
        try:
            obj = json.loads(raw)
            return cls(IPv4Network(obj["cluster_cidr"]), int(obj["block_prefix"]), str(obj["trust_domain"]),
                       float(obj.get("created_at", 0.0)))
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"the mesh's cluster settings in etcd are unreadable: {exc}") from None


def settings_conflicts(have: ClusterSettings, cluster_cidr: IPv4Network | None, block_prefix: int | None,
                       trust_domain: str | None) -> list[str]:
    """What the caller stated explicitly that disagrees with the recorded settings (pure)."""
    asked: list[tuple[str, object, object]] = [
        ("cluster CIDR", cluster_cidr, have.cluster_cidr),
        ("block size", block_prefix, have.block_prefix),
        ("trust domain", trust_domain, have.trust_domain),
    ]
    return [f"{what} {want} (the mesh has {recorded})" for what, want, recorded in asked
            if want is not None and want != recorded]


def get_cluster(etcd: Etcd, mesh: str) -> ClusterSettings | None:
    kv = etcd.get(keys.cluster_key(mesh))
    return ClusterSettings.from_json(kv.value) if kv else None


def ensure_cluster(etcd: Etcd, mesh: str, cluster_cidr: IPv4Network | None = None, block_prefix: int | None = None,
                   trust_domain: str | None = None, *, now: float | None = None) -> ClusterSettings:
    """The mesh's settings: recorded now from the arguments (or defaults) if this is the first
    host, else read back; an explicit argument that disagrees is refused."""
    have = get_cluster(etcd, mesh)
    if have is None:
        want = ClusterSettings(
            DEFAULT_CLUSTER_CIDR if cluster_cidr is None else cluster_cidr,
            DEFAULT_BLOCK_PREFIX if block_prefix is None else block_prefix,
            DEFAULT_TRUST_DOMAIN if trust_domain is None else trust_domain,
            time.time() if now is None else now,
        )
        if etcd.create(keys.cluster_key(mesh), want.to_json()):
            return want
        have = get_cluster(etcd, mesh)  # another host created it first: theirs counts
        if have is None:
            raise ConflictError(f"mesh {mesh!r}: the cluster settings were created and removed at once; retry")
    conflicts = settings_conflicts(have, cluster_cidr, block_prefix, trust_domain)
    if conflicts:
        raise ConflictError(
            f"mesh {mesh!r} already exists with other settings; refusing " + ", ".join(conflicts)
            + " (leave the option out to use the mesh's value)"
        )
    return have


# -- pod CIDR blocks -----------------------------------------------------------------------------

def _holder(raw: bytes) -> str:
    try:
        holder = json.loads(raw)["host"]
    except (ValueError, KeyError, TypeError):
        return "?"  # unreadable, but taken all the same: never hand it out twice
    return holder if isinstance(holder, str) else "?"


def block_holders(etcd: Etcd, mesh: str) -> dict[IPv4Network, tuple[str, int]]:
    """Every claimed block -> (holding host, mod_revision of the claim)."""
    kvs, _ = etcd.get_prefix(keys.blocks_prefix(mesh))
    out: dict[IPv4Network, tuple[str, int]] = {}
    for kv in kvs:
        block = keys.parse_block_key(mesh, kv.key)
        if block is not None:
            out[block] = (_holder(kv.value), kv.mod_revision)
    return out


def _claim_value(host: str, now: float | None) -> bytes:
    return json.dumps({"host": host, "claimed_at": time.time() if now is None else now}).encode()


def claim_block(etcd: Etcd, mesh: str, host: str, settings: ClusterSettings, want: IPv4Network | None = None,
                *, now: float | None = None) -> IPv4Network:
    """The pod CIDR block ``host`` holds, claiming one (``want``, or the first free) if it holds
    none. ConflictError if ``want`` is held by another host or no block is free."""
    keys.validate_host_name(host)
    if want is not None:
        keys.check_block(want, settings.cluster_cidr, settings.block_prefix)
    holders = block_holders(etcd, mesh)
    mine = sorted(block for block, (holder, _) in holders.items() if holder == host)
    if mine:
        if want is not None and want != mine[0]:
            raise UserError(f"host {host!r} already holds pod CIDR {mine[0]} in mesh {mesh!r}, not {want} "
                            "(run `host leave` to release it first)")
        return mine[0]
    if want is not None:
        if want in holders:
            raise ConflictError(f"pod CIDR {want} is held by host {holders[want][0]!r} in mesh {mesh!r}")
        if etcd.create(keys.block_key(mesh, want), _claim_value(host, now)):
            return want
        kv = etcd.get(keys.block_key(mesh, want))
        holder = _holder(kv.value) if kv else "?"
        if holder == host:  # our own earlier attempt, whose answer was lost
            return want
        raise ConflictError(f"pod CIDR {want} was just claimed by host {holder!r} in mesh {mesh!r}")
    for block in keys.candidate_blocks(settings.cluster_cidr, settings.block_prefix, holders.keys()):
        if etcd.create(keys.block_key(mesh, block), _claim_value(host, now)):
            return block
    raise ConflictError(f"mesh {mesh!r}: every /{settings.block_prefix} block of {settings.cluster_cidr} "
                        "is held by a host (`host leave` on a retired host frees its block)")


def release_block(etcd: Etcd, mesh: str, host: str) -> list[IPv4Network]:
    """Give back every block ``host`` holds. Each delete is conditional on the claim being
    unchanged, so a block re-claimed in the meantime is left to its new holder."""
    keys.validate_host_name(host)
    released = []
    for block, (holder, revision) in sorted(block_holders(etcd, mesh).items()):
        if holder == host and etcd.delete_if(keys.block_key(mesh, block), revision):
            released.append(block)
    return released


# -- hosts and pods ------------------------------------------------------------------------------

def _record(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def register_host(etcd: Etcd, mesh: str, record: dict[str, Any], lease: int) -> int:
    """Publish (or refresh) a host's record under its lease; returns the revision."""
    name = record.get("name")
    if not isinstance(name, str):
        raise UserError("a host record needs a name")
    return etcd.put(keys.host_key(mesh, name), json.dumps(record, sort_keys=True).encode(), lease)


def unregister_host(etcd: Etcd, mesh: str, host: str) -> bool:
    return etcd.delete(keys.host_key(mesh, host))


def list_hosts(etcd: Etcd, mesh: str) -> list[dict[str, Any]]:
    """The live hosts' records, by name. Unreadable records are skipped."""
    kvs, _ = etcd.get_prefix(keys.hosts_prefix(mesh))
    records = (_record(kv.value) for kv in kvs if keys.parse_host_key(mesh, kv.key))
    return [record for record in records if record is not None]


def put_pod(etcd: Etcd, mesh: str, host: str, pod: str, payload: dict[str, Any], lease: int) -> int:
    return etcd.put(keys.pod_key(mesh, host, pod), json.dumps(payload, sort_keys=True).encode(), lease)


def delete_pod(etcd: Etcd, mesh: str, host: str, pod: str) -> bool:
    return etcd.delete(keys.pod_key(mesh, host, pod))


def list_pods(etcd: Etcd, mesh: str, host: str | None = None) -> tuple[dict[tuple[str, str], dict[str, Any]], int]:
    """Pods of the mesh (or of one host) by (host, pod), and the revision to watch from + 1."""
    kvs, revision = etcd.get_prefix(keys.pods_prefix(mesh, host))
    pods: dict[tuple[str, str], dict[str, Any]] = {}
    for kv in kvs:
        where, record = keys.parse_pod_key(mesh, kv.key), _record(kv.value)
        if where is not None and record is not None:
            pods[where] = record
    return pods, revision
