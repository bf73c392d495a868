"""The app's view of a pod, as data: which mounts and which capabilities (netns/sandbox.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshns.errors import UserError
from meshns.names import validate_pod_name, validate_service_name
from meshns.netns import sandbox
from meshns.netns.sandbox import (
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    MS_SLAVE,
    Mount,
)

HIDE_FLAGS = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC


def test_plan_is_ip_netns_exec_then_hidden_state() -> None:
    p = sandbox.plan("meshns-web", [Path("/var/lib/meshns"), Path("/tmp/s"), Path("/tmp/s")],
                     ["resolv.conf", "hosts"], sys_readonly=False, last_cap=40)
    assert p.netns == "meshns-web"
    assert p.mounts == (
        Mount("", "/", None, MS_SLAVE | MS_REC),
        Mount("/etc/netns/meshns-web/hosts", "/etc/hosts", None, MS_BIND),
        Mount("/etc/netns/meshns-web/resolv.conf", "/etc/resolv.conf", None, MS_BIND),
        Mount("meshns-web", "/sys", "sysfs", 0),
        Mount("meshns-hidden", "/tmp/s", "tmpfs", HIDE_FLAGS, "size=4k,mode=0"),
        Mount("meshns-hidden", "/var/lib/meshns", "tmpfs", HIDE_FLAGS, "size=4k,mode=0"),
    )


def test_sysfs_follows_the_host_read_only_flag() -> None:
    p = sandbox.plan("n", [], [], sys_readonly=True, last_cap=40)
    assert Mount("n", "/sys", "sysfs", MS_RDONLY) in p.mounts


@pytest.mark.parametrize("cap", ["CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_MKNOD",
                                 "CAP_DAC_READ_SEARCH", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_BPF",
                                 "CAP_SYS_RESOURCE", "CAP_NET_BROADCAST", "CAP_PERFMON"])
def test_dangerous_capabilities_are_dropped(cap: str) -> None:
    assert sandbox.CAP_NUMBERS[cap] in sandbox.plan("n", [], [], False, 40).drop_caps


def test_docker_defaults_less_mknod_are_kept() -> None:
    dropped = set(sandbox.plan("n", [], [], False, 40).drop_caps)
    kept = {n for n in range(41) if n not in dropped}
    assert kept == {sandbox.CAP_NUMBERS[c] for c in sandbox.APP_CAPS}
    # The same bits as /proc/<app>/status CapBnd shows on a kernel with 41 capabilities.
    assert sum(1 << n for n in kept) == 0xA00425FB


def test_caps_the_kernel_does_not_know_are_not_dropped() -> None:
    assert max(sandbox.plan("n", [], [], False, 37).drop_caps) == 37


def test_hidden_dirs_include_the_default_state_dir() -> None:
    assert sandbox.hidden_dirs(Path("/tmp/x")) == [Path("/tmp/x"), Path("/var/lib/meshns")]


# Names become namespace names, paths, hosts entries and rule comments: whatever is accepted
# must be harmless in all of them.
SAFE = set("abcdefghijklmnopqrstuvwxyz0123456789-")


@given(st.text(max_size=50))
def test_accepted_names_cannot_inject(name: str) -> None:
    for validate in (validate_pod_name, validate_service_name):
        try:
            validate(name)
        except UserError:
            continue
        assert set(name) <= SAFE and not name.startswith("-") and not name.endswith("-")
        assert 0 < len(name) <= 40


@pytest.mark.parametrize("name", ["a;rm -rf /", "$(id)", "`id`", "../etc", "a/b", "a b", "-x", "x-",
                                  "A", "a\nb", "web\n", "a\x00b", "é", "a.b", "*", "x" * 41, ""])
def test_hostile_names_are_refused(name: str) -> None:
    with pytest.raises(UserError):
        validate_pod_name(name)
    with pytest.raises(UserError):
        validate_service_name(name)
