"""Turn the calling process into the pod's sidecar identity: inside the pod's network namespace,
uid/gid 1337 with no supplementary groups, no capability left (not even in the bounding set),
no_new_privs, and a descriptor limit fit for a proxy.

Two callers, the same steps: the supervisor's preexec hook (forked child, before exec) for a
sidecar started on its own, and the sidecar itself (dataplane/__main__.py) when the supervisor
started it early, as root in the host namespace, for a pod being created: it imports its code
first, then waits for its config, and only then comes here, before it binds or parses anything.
Either way the process is single-threaded when it enters the namespace (setns applies to the
calling thread only).
"""

from __future__ import annotations

import os
import resource
import signal
from pathlib import Path

from meshns import prctl
from meshns.errors import SystemFailure
from meshns.netns import sandbox
from meshns.netns.child import enter_netns
from meshns.ports import PROXY_GID, PROXY_UID

SIDECAR_NOFILE = 1 << 20


def _nr_open() -> int:
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return 1 << 20


def raise_nofile(want: int) -> None:
    """Soft and hard limit to ``want``; without CAP_SYS_RESOURCE (some containers) the hard limit
    cannot grow, so the soft one goes up to it."""
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def become_proxy(netns: str) -> None:
    supervisor = os.getppid()
    if thread_count() != 1:
        raise SystemFailure("the sidecar must be single-threaded to enter the pod's namespace")
    enter_netns(netns)
    # Two descriptors per proxied connection (more with pooled upstreams): the usual 1024
    # would cap a sidecar at a few hundred connections. Only root may raise the hard limit,
    # so it is done here, before the uid changes.
    raise_nofile(min(SIDECAR_NOFILE, _nr_open()))
    sandbox.drop_bounding_caps(sandbox.last_cap())  # none can ever come back, even by exec
    os.setgroups([])
    os.setgid(PROXY_GID)
    os.setuid(PROXY_UID)  # from root to 1337: every capability is gone from here on
    prctl.no_new_privs()  # and no setuid binary or file capability can bring one back
    # A sidecar never outlives its supervisor (as Envoy never outlives pilot-agent): orphaned, it
    # would go on serving a pod nobody manages, and hold the pod's namespace, rules included, alive
    # after the namespace's name is gone. The uid change above cleared any parent death signal (the
    # kernel does on every credential change), so it is set here, after it: SIGTERM, the sidecar's
    # own drain-and-exit. A supervisor that died before this line is caught by the check below.
    prctl.parent_death_signal(signal.SIGTERM)
    if os.getppid() != supervisor:
        raise SystemFailure("the supervisor exited while the sidecar was starting")
