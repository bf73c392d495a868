"""`meshns --help` and `meshns list` import none of the heavy machinery: the kernel executors
(pyroute2, python-iptables), the CA (cryptography), YAML and the compiler, or the sidecar's
stack. Checked on sys.modules in a fresh interpreter, never on a duration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("pyroute2", "iptc", "cryptography", "yaml", "ssl", "asyncio", "uvloop", "h11", "h2",
         "prometheus_client", "meshns.compiler", "meshns.netns.apply", "meshns.intercept.apply",
         "meshns.mtls.ca", "meshns.dataplane")

PROBE = """
import json, sys
sys.argv = ["meshns", *json.loads(sys.argv[1])]
from meshns.cli.main import main
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def _loaded(args: list[str]) -> set[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True,
                         check=True)
    return set(json.loads(out.stderr.strip().splitlines()[-1]))


def _heavy(mods: set[str]) -> list[str]:
    return sorted(m for m in mods if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize("args", [["--help"], ["create", "--help"], ["status", "--help"], ["apply", "--help"]])
def test_help_imports_nothing_heavy(args: list[str]) -> None:
    assert _heavy(_loaded(args)) == []


def test_list_imports_nothing_heavy(tmp_path: Path) -> None:
    mods = _loaded(["--state-dir", str(tmp_path / "state"), "list", "-o", "json"])
    assert "meshns.netns.status" in mods  # it did run
    assert _heavy(mods) == []


def test_create_dry_run_does_not_load_the_executors(tmp_path: Path) -> None:
    mods = _loaded(["--state-dir", str(tmp_path / "state"), "create", "p1", "--dry-run"])
    assert "meshns.netns.lifecycle" in mods
    assert not {"pyroute2", "iptc"} & {m.split(".")[0] for m in mods}
