"""Enter a pod as its app: the pod's network namespace, a private mount namespace that hides the
mesh's state, and a reduced capability set. Called in the process that is about to exec the app.

Why not plain ``ip netns exec``: the app runs as root (legacy programs expect to), and a full-root
app could flush its pod's iptables rules and go around the sidecar, read the CA key from the state
directory, or enter another pod's namespace. Container runtimes answer this with a capability
bounding set and a filesystem view; we do the same:

- Capabilities: Docker's default set (what operators already run their services with) minus
  CAP_MKNOD (without a device cgroup, a device node would read the disk under every mount). No
  CAP_NET_ADMIN (the rules stay), no CAP_SYS_ADMIN (no mount/umount, no setns), no CAP_SYS_PTRACE
  (no reading the sidecar's or the supervisor's memory: the kernel also refuses /proc/<pid>/mem,
  /fd and /root of any process whose capabilities are not a subset of the caller's).
- Files: the steps of ``ip netns exec`` (a slave copy of the host's mounts, the pod's
  /etc/netns/<ns>/* bound over /etc, a fresh /sys for the pod's interfaces), then an empty
  read-only tmpfs over each hidden directory (the state directory with the registry, the CA and
  the pod logs). Without CAP_SYS_ADMIN the app cannot unmount it.

Everything here is ``Plan`` data first (pure, unit-tested), then applied with raw syscalls by
``enter`` in a single-threaded process (unshare(CLONE_NEWNS) refuses threads).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from meshns.config import DEFAULT_STATE_DIR
from meshns.netns.child import enter_netns

# Docker's default capability set (moby/oci/caps/defaults.go), less CAP_MKNOD.
APP_CAPS: Final = frozenset({
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
    "CAP_KILL", "CAP_AUDIT_WRITE",
})
# linux/capability.h numbering; caps above the kernel's cap_last_cap are skipped at apply time.
CAP_NUMBERS: Final = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3, "CAP_FSETID": 4,
    "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15, "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19, "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23, "CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27, "CAP_LEASE": 28, "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31, "CAP_MAC_OVERRIDE": 32, "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35, "CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38, "CAP_BPF": 39, "CAP_CHECKPOINT_RESTORE": 40,
}
ETC_NETNS: Final = Path("/etc/netns")

CLONE_NEWNS: Final = 0x00020000
MS_RDONLY: Final = 1
MS_NOSUID: Final = 2
MS_NODEV: Final = 4
MS_NOEXEC: Final = 8
MS_BIND: Final = 4096
MS_REC: Final = 16384
MS_SLAVE: Final = 1 << 19
MNT_DETACH: Final = 2
PR_CAPBSET_DROP: Final = 24
PR_CAP_AMBIENT: Final = 47
PR_CAP_AMBIENT_CLEAR_ALL: Final = 4


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str | None
    flags: int
    data: str | None = None


@dataclass(frozen=True)
class Plan:
    netns: str
    mounts: tuple[Mount, ...]
    drop_caps: tuple[int, ...]  # capability numbers to remove from the bounding set


def plan(netns: str, hide: Sequence[Path], etc_files: Sequence[str], sys_readonly: bool,
         last_cap: int) -> Plan:
    """What ``enter`` will do, as data. ``etc_files``: the names under /etc/netns/<netns>/."""
    mounts = [Mount("", "/", None, MS_SLAVE | MS_REC)]
    mounts += [Mount(str(ETC_NETNS / netns / f), f"/etc/{f}", None, MS_BIND) for f in sorted(etc_files)]
    # ip netns exec's /sys: a fresh sysfs shows the pod's interfaces, not the host's.
    mounts.append(Mount(netns, "/sys", "sysfs", MS_RDONLY if sys_readonly else 0))
    for d in sorted({p.absolute() for p in hide}):
        mounts.append(Mount("meshns-hidden", str(d), "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                            "size=4k,mode=0"))
    keep = {CAP_NUMBERS[c] for c in APP_CAPS}
    return Plan(netns, tuple(mounts), tuple(n for n in range(last_cap + 1) if n not in keep))


_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(m: Mount) -> None:
    src = m.source.encode()
    target = m.target.encode()
    fstype = m.fstype.encode() if m.fstype else None
    data = m.data.encode() if m.data else None
    _check(_libc.mount(src, target, fstype, ctypes.c_ulong(m.flags), data), f"mount {m.target}")


def apply(p: Plan) -> None:
    """Carry out ``p`` in this process. Only in a process about to exec (a forked child or
    ``meshns exec``): it leaves the host's namespaces for good."""
    enter_netns(p.netns)
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    for m in p.mounts:
        if m.fstype == "sysfs":
            # Detach the host's /sys first (ip netns exec does the same); a missing one is fine.
            _libc.umount2(m.target.encode(), MNT_DETACH)
        if m.fstype == "tmpfs" and not os.path.isdir(m.target):
            continue  # nothing there to hide
        _mount(m)
    _drop(p.drop_caps)


def _drop(caps: Sequence[int]) -> None:
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    for cap in caps:
        _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")


def drop_bounding_caps(last: int) -> None:
    """Empty the bounding set (the sidecar: it needs no capability at all)."""
    _drop(range(last + 1))


def last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return max(CAP_NUMBERS.values())


def sys_is_readonly() -> bool:
    """ip netns exec mounts the pod's sysfs read-only when the host's /sys is."""
    try:
        st = os.statvfs("/sys")
    except OSError:
        return False
    return bool(st.f_flag & os.ST_RDONLY)


def hidden_dirs(state_dir: Path) -> list[Path]:
    """This mesh's state directory, and the default one if another mesh lives there."""
    return [state_dir.absolute(), Path(DEFAULT_STATE_DIR)]


def enter(netns: str, hide: Sequence[Path]) -> None:
    """Plan for this machine, then apply: the pod's view for the app about to be exec'd."""
    etc_dir = ETC_NETNS / netns
    etc_files = sorted(os.listdir(etc_dir)) if etc_dir.is_dir() else []
    apply(plan(netns, hide, etc_files, sys_is_readonly(), last_cap()))
