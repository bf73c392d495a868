"""The pieces of create's gated start-up that need no root: the supervisor's gate, its command
line, the sidecar's entry-point argument handling, and the CA trust domain read without the CA's
code."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshns.mtls.ca import CertAuthority
from meshns.netns import supervisor
from meshns.netns.publish import ca_trust_domain


def _gated(tmp_path: Path) -> tuple[supervisor.Supervisor, int]:
    (tmp_path / "supervisor.json").write_text('{"netns": "x", "pod": "p"}')
    r, w = os.pipe()
    return supervisor.Supervisor(tmp_path, r), w


def test_gate_opens_on_go(tmp_path: Path) -> None:
    sup, w = _gated(tmp_path)
    os.write(w, supervisor.GATE_GO)
    assert sup.await_gate() is True
    assert sup.gate_fd is None
    os.close(w)


def test_gate_closed_without_go_means_give_up(tmp_path: Path) -> None:
    sup, w = _gated(tmp_path)
    os.close(w)  # create died or rolled back
    assert sup.await_gate() is False


def test_gate_wait_ends_when_stopped(tmp_path: Path) -> None:
    sup, w = _gated(tmp_path)
    sup.stopping = True
    assert sup.await_gate() is False
    os.close(w)


def test_command_passes_the_gate_only_when_given() -> None:
    plain = supervisor.command(Path("/s"), "p")
    assert "--gate-fd" not in plain
    assert supervisor.command(Path("/s"), "p", 7)[-2:] == ["--gate-fd", "7"]


def test_sidecar_entry_without_enter_keeps_its_arguments() -> None:
    code = ("import sys; sys.argv = ['x']\n"
            "import runpy; m = runpy.run_module('meshns.dataplane.__main__', run_name='not_main')\n"
            "print(m['_become_proxy_after_config'](['--config', '-']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['--config', '-']"


def test_sidecar_entry_with_enter_exits_quietly_without_config() -> None:
    """An early sidecar whose supervisor gave up (stdin closed, no config) starts nothing."""
    out = subprocess.run([sys.executable, "-m", "meshns.dataplane", "--config", "-", "--enter-netns", "nope"],
                         input="", capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert out.stderr == ""


def test_trust_domain_read_matches_the_ca(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    assert ca_trust_domain(ca_dir) is None
    CertAuthority.ensure(ca_dir, "example.org")
    assert ca_trust_domain(ca_dir) == CertAuthority.load(ca_dir).trust_domain == "example.org"


def test_children_never_import_from_the_current_directory() -> None:
    """-P: a `meshns` folder in the directory create was run from is not imported by root."""
    cmd = supervisor.command(Path("/s"), "p")
    assert cmd[1:4] == ["-P", "-m", supervisor.SUPERVISOR_MODULE]


def test_supervisor_naps_until_the_next_thing_due() -> None:
    cap = supervisor.IDENTITY_CHECK_S
    cases = [
        # now, next identity check, restart at -> nap
        (10.0, 10.2, None, 0.2),
        (10.0, 10.2, 10.1, 0.1),  # a sidecar restart comes first
        (10.0, 10.2, 9.0, 0.0),  # a restart already due: no nap
        (10.0, 9.5, None, 0.0),  # the check is late
        (10.0, math.inf, None, cap),  # no identity: capped
        (10.0, math.inf, 10.3, 0.3),  # no identity, a restart pending
        (10.0, 99.0, 50.0, cap),  # a clock step: capped
    ]
    for now, check_at, restart_at, want in cases:
        assert supervisor.nap_s(now, check_at, restart_at) == pytest.approx(want), (now, check_at, restart_at)
