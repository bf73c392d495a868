"""The registry: the single source of truth for pods (and, later, services and policies).

``Registry`` is the seam: the embedded SQLite implementation lives in meshns.sqlite_registry,
and a multi-host etcd implementation can sit behind the same few calls. Address allocation is
part of ``reserve_pod`` so each backend can make it atomic its own way (an IMMEDIATE
transaction here, a compare-and-create transaction in etcd).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Protocol

from meshns.model import PodRecord, PodSpec, PodState, RemotePod, ServiceRecord

Allocator = Callable[[set[IPv4Address]], IPv4Address]
ConfigKey = tuple[str, str, str]  # kind, namespace, name


@dataclass(frozen=True)
class ConfigRow:
    """An applied config document (Istio YAML), stored as JSON text."""

    kind: str
    namespace: str
    name: str
    doc: str
    applied_at: float = 0.0


class Registry(Protocol):
    def get_meta(self) -> dict[str, str]: ...

    def set_meta_if_absent(self, values: dict[str, str]) -> dict[str, str]:
        """Record the mesh settings on first use; return what is recorded afterwards."""
        ...

    def reserve_pod(
        self, name: str, netns: str, veth: str, spec: PodSpec, owner_pid: int, allocate: Allocator
    ) -> PodRecord:
        """Insert a pod in state CREATING with a fresh address. ConflictError if it exists."""
        ...

    def set_state(self, name: str, state: PodState, owner_pid: int | None) -> None: ...

    def get_pod(self, name: str) -> PodRecord | None: ...

    def list_pods(self) -> list[PodRecord]: ...

    def remove_pod(self, name: str) -> None: ...

    def generation(self) -> int:
        """A counter moved on by every change sidecars can see (the snapshot version)."""
        ...

    def ensure_service(self, name: str, ports: tuple[tuple[int, int], ...],
                       allocate_vip: Allocator) -> ServiceRecord: ...

    def list_services(self) -> list[ServiceRecord]: ...

    def remove_service(self, name: str) -> bool: ...

    def put_configs(self, rows: list[ConfigRow]) -> None: ...

    def list_configs(self) -> list[ConfigRow]: ...

    def delete_configs(self, keys: list[ConfigKey]) -> int: ...

    def remove_configs(self, keys: list[ConfigKey]) -> list[bool]:
        """Delete the documents in one transaction; per key, whether it was there."""
        ...

    def get_configs(self, keys: list[ConfigKey]) -> list[ConfigRow]:
        """The stored documents with these keys (missing ones are left out)."""
        ...

    def restore_configs(self, rows: list[ConfigRow], absent: list[ConfigKey]) -> None:
        """Put documents back as they were (their own applied_at) and remove ``absent`` keys, in
        one transaction: how apply and delete -f undo a change the pods could not be given."""
        ...

    def revoke(self, identity: str) -> bool:
        """Add a SPIFFE ID to the revocation list; False if it was there already."""
        ...

    def unrevoke(self, identity: str) -> bool: ...

    def list_revoked(self) -> list[str]: ...

    def replace_remote_pods(self, pods: list[RemotePod]) -> bool:
        """Multi-host: the other hosts' ready pods, as this host's agent last saw them."""
        ...

    def list_remote_pods(self) -> list[RemotePod]: ...

    def set_meta(self, values: dict[str, str], remove: tuple[str, ...] = ()) -> None: ...

    def close(self) -> None: ...
