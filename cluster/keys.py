"""Where one mesh lives in etcd: the name of every record, and the pod-block walk. Pure.

    /meshns/<mesh>/cluster                          cluster CIDR, block size, trust domain   (once)
    /meshns/<mesh>/blocks/<a.b.c.d-prefix>          which host holds a pod CIDR block        (not leased)
    /meshns/<mesh>/hosts/<host>                     a live host agent                        (leased)
    /meshns/<mesh>/pods/<host>/<pod>                a pod on that host                       (leased)
    /meshns/<mesh>/config/<kind>/<namespace>/<name> an applied config document              (not leased)
    /meshns/<mesh>/revoked/<url-quoted SPIFFE ID>   a revoked identity                       (not leased)
    /meshns/<mesh>/trust/bundle                     PEM of the mesh root certificates

Host and pod records are leased so they vanish with their agent; blocks are not, like Calico's
block affinities: a crashed host's pods may still hold addresses from its block, and the host
gets the same block back when it re-joins under its name.

Every part is validated before it goes into a key, so no part can hold a '/', and each parser
returns exactly what its builder was given. Parsers return None for a key that is not of their
shape (a watcher skips such keys instead of failing on someone else's write).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from ipaddress import IPv4Network
from urllib.parse import quote, unquote

from meshns.errors import UserError
from meshns.mtls.identity import SpiffeId
from meshns.names import validate_pod_name

ROOT = "/meshns/"
# Host and mesh names become key levels and appear in every error message about them: DNS-label
# characters only (no '/', nothing to quote), and short.
NAME_MAX = 40
_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?")
_KIND_RE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,62}")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


def _validate_name(name: str, what: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise UserError(
            f"{what} name {name!r} is invalid: 1-{NAME_MAX} lower-case letters, digits and inner '-'"
        )
    return name


def validate_host_name(name: str) -> str:
    return _validate_name(name, "host")


def validate_mesh_name(name: str) -> str:
    return _validate_name(name, "mesh")


def mesh_prefix(mesh: str) -> str:
    return f"{ROOT}{validate_mesh_name(mesh)}/"


def _rest(mesh: str, section: str, key: str) -> list[str] | None:
    """The '/'-separated parts of ``key`` after ``/meshns/<mesh>/<section>/``, or None."""
    head = f"{mesh_prefix(mesh)}{section}/"
    if not key.startswith(head):
        return None
    return key[len(head):].split("/")


# -- cluster settings and trust ------------------------------------------------------------------

def cluster_key(mesh: str) -> str:
    return f"{mesh_prefix(mesh)}cluster"


def trust_bundle_key(mesh: str) -> str:
    return f"{mesh_prefix(mesh)}trust/bundle"


# -- pod CIDR blocks -----------------------------------------------------------------------------

def blocks_prefix(mesh: str) -> str:
    return f"{mesh_prefix(mesh)}blocks/"


def block_key(mesh: str, block: IPv4Network) -> str:
    return f"{blocks_prefix(mesh)}{block.network_address}-{block.prefixlen}"


def parse_block_key(mesh: str, key: str) -> IPv4Network | None:
    rest = _rest(mesh, "blocks", key)
    if rest is None or len(rest) != 1:
        return None
    address, sep, prefix = rest[0].rpartition("-")
    if not sep or not prefix.isdigit():
        return None
    try:
        block = IPv4Network(f"{address}/{prefix}", strict=True)
    except ValueError:
        return None
    return block if block_key(mesh, block) == key else None  # only the canonical spelling


def check_block(block: IPv4Network, cluster_cidr: IPv4Network, block_prefix: int) -> IPv4Network:
    """``block`` must be one of the cluster's blocks: inside the cluster CIDR, of the block size."""
    if block.prefixlen != block_prefix or not block.subnet_of(cluster_cidr):
        raise UserError(f"pod CIDR {block} is not a /{block_prefix} block of the cluster CIDR {cluster_cidr}")
    return block


def candidate_blocks(cluster_cidr: IPv4Network, block_prefix: int,
                     taken: Collection[IPv4Network]) -> Iterator[IPv4Network]:
    """The cluster's blocks that are not taken, lowest address first. Lazy: a /8 cut into /29s
    has two million blocks and the walk usually stops at the first few. Deterministic on
    purpose: hosts racing for the same block settle it by compare-and-create, and the loser
    simply tries the next one."""
    if not cluster_cidr.prefixlen <= block_prefix <= 32:
        raise UserError(f"block size /{block_prefix} does not fit the cluster CIDR {cluster_cidr}")
    return (block for block in cluster_cidr.subnets(new_prefix=block_prefix) if block not in taken)


# -- hosts and pods ------------------------------------------------------------------------------

def hosts_prefix(mesh: str) -> str:
    return f"{mesh_prefix(mesh)}hosts/"


def host_key(mesh: str, host: str) -> str:
    return f"{hosts_prefix(mesh)}{validate_host_name(host)}"


def parse_host_key(mesh: str, key: str) -> str | None:
    rest = _rest(mesh, "hosts", key)
    if rest is None or len(rest) != 1 or not _NAME_RE.fullmatch(rest[0]):
        return None
    return rest[0]


def pods_prefix(mesh: str, host: str | None = None) -> str:
    """Every pod of the mesh, or (with ``host``) every pod of one host."""
    if host is None:
        return f"{mesh_prefix(mesh)}pods/"
    return f"{mesh_prefix(mesh)}pods/{validate_host_name(host)}/"


def pod_key(mesh: str, host: str, pod: str) -> str:
    return f"{pods_prefix(mesh, host)}{validate_pod_name(pod)}"


def parse_pod_key(mesh: str, key: str) -> tuple[str, str] | None:
    """``/meshns/<mesh>/pods/<host>/<pod>`` -> (host, pod)."""
    rest = _rest(mesh, "pods", key)
    if rest is None or len(rest) != 2 or not _NAME_RE.fullmatch(rest[0]):
        return None
    try:
        validate_pod_name(rest[1])
    except UserError:
        return None
    return rest[0], rest[1]


# -- config documents ----------------------------------------------------------------------------

def config_prefix(mesh: str) -> str:
    return f"{mesh_prefix(mesh)}config/"


def _config_parts_ok(kind: str, namespace: str, name: str) -> bool:
    return bool(_KIND_RE.fullmatch(kind) and _DNS_LABEL.fullmatch(namespace) and _DNS_SUBDOMAIN.fullmatch(name))


def config_key(mesh: str, kind: str, namespace: str, name: str) -> str:
    if not _config_parts_ok(kind, namespace, name):
        raise UserError(f"config {kind} {namespace}/{name} cannot be stored: kind, namespace or name is malformed")
    return f"{config_prefix(mesh)}{kind}/{namespace}/{name}"


def parse_config_key(mesh: str, key: str) -> tuple[str, str, str] | None:
    """``/meshns/<mesh>/config/<kind>/<namespace>/<name>`` -> (kind, namespace, name)."""
    rest = _rest(mesh, "config", key)
    if rest is None or len(rest) != 3 or not _config_parts_ok(*rest):
        return None
    return rest[0], rest[1], rest[2]


# -- revoked identities --------------------------------------------------------------------------

def revoked_prefix(mesh: str) -> str:
    return f"{mesh_prefix(mesh)}revoked/"


def revoked_key(mesh: str, spiffe_id: str) -> str:
    # Parsed first so only a well-formed ID is stored; quoted whole (no safe characters) so its
    # slashes cannot become key levels.
    return f"{revoked_prefix(mesh)}{quote(SpiffeId.parse(spiffe_id).uri, safe='')}"


def parse_revoked_key(mesh: str, key: str) -> str | None:
    rest = _rest(mesh, "revoked", key)
    if rest is None or len(rest) != 1:
        return None
    try:
        uri = SpiffeId.parse(unquote(rest[0])).uri
    except UserError:
        return None
    return uri if revoked_key(mesh, uri) == key else None
