"""A pod's name-resolution files, as ``ip netns exec`` expects them in /etc/netns/<netns>/.

``ip netns exec`` bind-mounts /etc/netns/<netns>/hosts over /etc/hosts (and resolv.conf) for
the command it runs, so every program started with ``meshns exec`` or as a pod's app finds the
other pods by name without any change to the program. The files are rewritten in place (same
inode) when pods come and go, so a bind mount made earlier sees the new content.

Which mesh owns a namespace is recorded in the state directory (``netns/<name>``), never in
/etc/netns/<name>/: ``ip netns exec`` bind-mounts every file found there over /etc. gc only
removes orphan namespaces that carry its own mark, never another mesh's or a user's.

Write failures (a full or read-only file system) leave as RegistryError through
meshns.statefs, naming which directory could not be written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from ipaddress import IPv4Address
from pathlib import Path

from meshns.statefs import state_writes

ETC_NETNS = Path("/etc/netns")
ETC_LABEL = "the file system of"

RESOLV_CONF = (
    "# meshns pod: pods are found by name through /etc/hosts; there is no DNS server inside the pod.\n"
    "nameserver 127.0.0.1\n"
    "options timeout:1 attempts:1\n"
)


def render_hosts(pods: Iterable[tuple[str, IPv4Address]]) -> str:
    lines = ["# meshns: every pod of this mesh; rewritten when pods come and go", "127.0.0.1\tlocalhost"]
    lines.extend(f"{ip}\t{name}" for name, ip in sorted(pods))
    return "\n".join(lines) + "\n"


def netns_etc_dir(netns: str, root: Path = ETC_NETNS) -> Path:
    return root / netns


def write_in_place(path: Path, text: str) -> None:
    """Rewrite keeping the inode bind mounts point at. The new text is written over the old and
    the rest cut off afterwards (not truncated first): on a full file system the write fails with
    the old entries still in place instead of leaving an empty hosts file behind."""
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def owner_mark(state_dir: Path, netns: str) -> Path:
    return state_dir / "netns" / netns


def prepare_pod_dir(netns: str, state_dir: Path, root: Path = ETC_NETNS) -> None:
    mark = owner_mark(state_dir, netns)
    with state_writes(state_dir, f"marking namespace {netns} as this mesh's"):
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.touch()
    d = netns_etc_dir(netns, root)
    with state_writes(d, "writing the pod's hosts and resolv.conf", ETC_LABEL):
        d.mkdir(parents=True, exist_ok=True)
        write_in_place(d / "resolv.conf", RESOLV_CONF)
        if not (d / "hosts").exists():
            write_in_place(d / "hosts", render_hosts(()))


def is_ours(state_dir: Path, netns: str) -> bool:
    return owner_mark(state_dir, netns).exists()


def read_hosts(netns: str, root: Path = ETC_NETNS) -> str | None:
    try:
        return (netns_etc_dir(netns, root) / "hosts").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def write_hosts(netns: str, text: str, root: Path = ETC_NETNS) -> None:
    d = netns_etc_dir(netns, root)
    if d.is_dir():
        with state_writes(d, "rewriting the pod's hosts file", ETC_LABEL):
            write_in_place(d / "hosts", text)


def remove_pod_files(netns: str, state_dir: Path, root: Path = ETC_NETNS) -> None:
    shutil.rmtree(netns_etc_dir(netns, root), ignore_errors=True)
    owner_mark(state_dir, netns).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        root.rmdir()  # only succeeds when empty; leaves a user's other entries alone


def owned_marks(state_dir: Path) -> list[str]:
    try:
        return sorted(os.listdir(state_dir / "netns"))
    except FileNotFoundError:
        return []
