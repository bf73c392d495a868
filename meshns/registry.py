"""The registry: the single source of truth for pods (and, later, services and policies).

``Registry`` is the seam: the embedded SQLite implementation lives in meshns.sqlite_registry,
and a multi-host etcd implementation can sit behind the same few calls. Address allocation is
part of ``reserve_pod`` so each backend can make it atomic its own way (an IMMEDIATE
transaction here, a compare-and-create transaction in etcd).
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Protocol

from meshns.model import PodRecord, PodSpec, PodState

Allocator = Callable[[set[IPv4Address]], IPv4Address]


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

    def close(self) -> None: ...
