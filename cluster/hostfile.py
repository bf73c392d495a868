"""This host's membership of a multi-host mesh, on disk under <state>/host/.

    settings.json   what `host join` was asked (etcd endpoints, name, address, TTL...); the agent
                    reads it at start, so a restarted agent rejoins the same way
    status.json     written by the agent: joined or not, connected to etcd or not, the hosts it
                    sees. `host list` and `host join` read it; they never talk to etcd themselves
                    (the agent is the only etcd client on a host)
    base.json       the sync base: what this host and etcd last agreed on (see cluster.sync)
    agent.log       the agent's log
    leave           present while `host leave` asks the agent to give up its block and exit
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from meshns.errors import UserError

DEFAULT_TTL_S = 10
DEFAULT_CLUSTER_CIDR = "10.188.0.0/16"
DEFAULT_BLOCK_PREFIX = 24


@dataclass(frozen=True)
class HostSettings:
    name: str
    mesh: str
    endpoints: tuple[str, ...]
    address: str  # where other hosts route this host's pod block to
    ttl_s: int = DEFAULT_TTL_S
    cluster_cidr: str = DEFAULT_CLUSTER_CIDR
    block_prefix: int = DEFAULT_BLOCK_PREFIX
    want_block: str | None = None  # an exact block asked for (or the pods' existing range)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> HostSettings:
        raw = json.loads(text)
        return cls(name=str(raw["name"]), mesh=str(raw["mesh"]), endpoints=tuple(raw["endpoints"]),
                   address=str(raw["address"]), ttl_s=int(raw.get("ttl_s", DEFAULT_TTL_S)),
                   cluster_cidr=str(raw.get("cluster_cidr", DEFAULT_CLUSTER_CIDR)),
                   block_prefix=int(raw.get("block_prefix", DEFAULT_BLOCK_PREFIX)),
                   want_block=raw.get("want_block"))


def host_dir(state_dir: Path) -> Path:
    return state_dir / "host"


def write_json(path: Path, text: str) -> None:
    """Atomic replace: readers (the CLI) never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def load_settings(state_dir: Path) -> HostSettings | None:
    path = host_dir(state_dir) / "settings.json"
    try:
        return HostSettings.from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: unreadable host settings ({exc}); `meshns host leave --force` clears them") from exc


def save_settings(state_dir: Path, s: HostSettings) -> None:
    write_json(host_dir(state_dir) / "settings.json", s.to_json())


def read_status(state_dir: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads((host_dir(state_dir) / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def write_status(state_dir: Path, status: dict[str, Any]) -> None:
    write_json(host_dir(state_dir) / "status.json", json.dumps(status, sort_keys=True, indent=1))


def agent_alive(status: dict[str, Any] | None) -> int | None:
    """The agent's pid if the status names one that is still running an agent."""
    if not status:
        return None
    pid = status.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"meshns.cluster.agent" in cmdline else None
