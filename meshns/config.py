"""The mesh instance a command works on: state directory, bridge, pod CIDR, namespace prefix.

Everything that would let two meshes on one host collide (state directory, bridge, pod and
service CIDRs, namespace prefix) is configurable, so tests (and later,
simulated hosts) each get their own. The first command that initialises a state directory
records its bridge, CIDR and prefix in the registry; later commands read them back, and an
explicit option that disagrees with what is recorded is refused rather than silently mixing two
meshes' resources.

Precedence: command-line option, then environment variable, then what the registry recorded,
then the built-in default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

from meshns.errors import ConflictError, UserError
from meshns.names import validate_ifname, validate_ns_prefix
from meshns.netns.ipam import parse_pod_cidr

DEFAULT_STATE_DIR = "/var/lib/meshns"
DEFAULT_BRIDGE = "meshns0"
DEFAULT_POD_CIDR = "10.188.0.0/16"
DEFAULT_NS_PREFIX = "meshns-"
DEFAULT_SERVICE_CIDR = "10.189.0.0/16"

ENV = {
    "state_dir": "MESHNS_STATE_DIR",
    "bridge": "MESHNS_BRIDGE",
    "pod_cidr": "MESHNS_POD_CIDR",
    "ns_prefix": "MESHNS_NS_PREFIX",
    "service_cidr": "MESHNS_SERVICE_CIDR",
}


@dataclass(frozen=True)
class MeshConfig:
    state_dir: Path
    bridge: str
    pod_cidr: IPv4Network
    ns_prefix: str
    service_cidr: IPv4Network = IPv4Network(DEFAULT_SERVICE_CIDR)  # noqa: RUF009 - immutable
    # Multi-host: the whole mesh's pod range (every host's block), recorded by `host join`.
    # Forwarding between the bridge and it is allowed; everything else stays on the host.
    cluster_cidr: IPv4Network | None = None

    @property
    def registry_path(self) -> Path:
        return self.state_dir / "registry.db"

    @property
    def lock_path(self) -> Path:
        return self.state_dir / "lock"

    @property
    def ca_dir(self) -> Path:
        """The mesh CA (root keys 0600, in a 0700 directory): root-only, never inside a pod."""
        return self.state_dir / "ca"

    def pod_dir(self, pod: str) -> Path:
        return self.state_dir / "pods" / pod


@dataclass(frozen=True)
class ConfigRequest:
    """What the caller asked for; None means 'not given'."""

    state_dir: str | None = None
    bridge: str | None = None
    pod_cidr: str | None = None
    ns_prefix: str | None = None
    service_cidr: str | None = None

    def with_env(self, environ: dict[str, str] | None = None) -> ConfigRequest:
        env = os.environ if environ is None else environ
        return ConfigRequest(
            state_dir=self.state_dir or env.get(ENV["state_dir"]) or None,
            bridge=self.bridge or env.get(ENV["bridge"]) or None,
            pod_cidr=self.pod_cidr or env.get(ENV["pod_cidr"]) or None,
            ns_prefix=self.ns_prefix if self.ns_prefix is not None else env.get(ENV["ns_prefix"]),
            service_cidr=self.service_cidr or env.get(ENV["service_cidr"]) or None,
        )


def resolve(request: ConfigRequest, recorded: dict[str, str]) -> MeshConfig:
    """Merge the request with what the registry recorded (pure; raises on disagreement)."""
    state_dir = Path(request.state_dir or DEFAULT_STATE_DIR).absolute()
    values: dict[str, str] = {}
    for key, default in (("bridge", DEFAULT_BRIDGE), ("pod_cidr", DEFAULT_POD_CIDR),
                         ("ns_prefix", DEFAULT_NS_PREFIX), ("service_cidr", DEFAULT_SERVICE_CIDR)):
        asked: str | None = getattr(request, key)
        have = recorded.get(key)
        if asked is not None and have is not None and asked != have:
            raise ConflictError(
                f"state directory {state_dir} belongs to a mesh with {key}={have!r}; "
                f"refusing {key}={asked!r} (use another --state-dir for another mesh)"
            )
        values[key] = asked if asked is not None else (have if have is not None else default)
    return MeshConfig(
        state_dir=state_dir,
        bridge=validate_ifname(values["bridge"], "bridge name"),
        pod_cidr=parse_pod_cidr(values["pod_cidr"]),
        ns_prefix=validate_ns_prefix(values["ns_prefix"]),
        service_cidr=_service_cidr(values["service_cidr"], values["pod_cidr"]),
        cluster_cidr=parse_pod_cidr(recorded["cluster_cidr"]) if recorded.get("cluster_cidr") else None,
    )


def _service_cidr(text: str, pod_cidr: str) -> IPv4Network:
    net = parse_pod_cidr(text)
    if net.overlaps(parse_pod_cidr(pod_cidr)):
        raise UserError(f"service CIDR {net} overlaps the pod CIDR {pod_cidr}")
    return net


def to_record(cfg: MeshConfig) -> dict[str, str]:
    out = {"bridge": cfg.bridge, "pod_cidr": str(cfg.pod_cidr), "ns_prefix": cfg.ns_prefix,
           "service_cidr": str(cfg.service_cidr)}
    if cfg.cluster_cidr is not None:
        out["cluster_cidr"] = str(cfg.cluster_cidr)
    return out
