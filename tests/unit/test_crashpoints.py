"""The crash-point test hook: every declared step is called exactly once in the code (so the
parametrized crash tests cover every step boundary), and a match kills with SIGKILL."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from meshns.netns import crashpoints

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "netns" / "lifecycle.py", ROOT / "cli" / "config_cmds.py"]
CALL = re.compile(r"""crash_point\(\s*["']([^"']+)["']\s*\)""")


def _called() -> list[str]:
    return [m for src in SOURCES for m in CALL.findall(src.read_text())]


def test_every_declared_step_is_called_exactly_once_and_nothing_else() -> None:
    called = _called()
    assert sorted(called) == sorted(crashpoints.ALL_STEPS)
    assert len(set(crashpoints.ALL_STEPS)) == len(crashpoints.ALL_STEPS)


def test_the_special_steps_are_declared_steps() -> None:
    assert crashpoints.CREATE_COMMITTED in crashpoints.CREATE_STEPS
    assert set(crashpoints.LAST_POD_ONLY) <= set(crashpoints.DELETE_STEPS)


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = ("import atexit, sys\n"
            "from meshns.netns.crashpoints import crash_point\n"
            "atexit.register(lambda: print('atexit ran'))\n"
            "try:\n"
            "    crash_point('create:netns-added')\n"
            "    print('went on')\n"
            "finally:\n"
            "    print('finally ran')\n")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30,
                          check=False)


def test_a_matching_step_kills_with_sigkill_and_nothing_runs_after_it() -> None:
    done = _run({"MESHNS_CRASH_AT": "create:netns-added", "PATH": "/usr/bin:/bin"})
    assert done.returncode == -signal.SIGKILL
    assert done.stdout == ""  # no finally, no atexit


def test_another_step_or_no_variable_does_nothing() -> None:
    for env in ({"MESHNS_CRASH_AT": "create:veth-added"}, {}):
        done = _run({**env, "PATH": "/usr/bin:/bin"})
        assert done.returncode == 0
        assert done.stdout.splitlines() == ["went on", "finally ran", "atexit ran"]


def test_a_reused_pid_is_not_taken_for_the_owner_of_a_row() -> None:
    from meshns.netns.gc import owner_may_be

    written = 1000.0
    assert owner_may_be(990.0, written)  # started, then wrote the row: may be at work
    assert owner_may_be(1001.5, written)  # within the precision of /proc's start times
    assert not owner_may_be(1010.0, written)  # started after the row was written: a reused pid
    assert owner_may_be(None, written)  # unknown: assume it is (gc must never undo a live command)
