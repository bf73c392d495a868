"""The sidecar's start-up imports leave out what it first needs after it is ready: the
Prometheus client (at the first scrape) and h11 (at the first admin connection); a missing one is
still found at start. Checked on sys.modules in a fresh interpreter, never on a duration."""

from __future__ import annotations

import json
import subprocess
import sys

from meshns.dataplane.server import LATER_IMPORTS, missing_packages

PROBE = """
import json, sys
import meshns.dataplane.__main__
print(json.dumps(sorted(sys.modules)))
"""


def test_start_up_imports_leave_out_the_scrape_and_admin_stack() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    mods = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "meshns.dataplane.server" in mods  # it did import the sidecar
    late = {"prometheus_client", "h11", "http.server", "wsgiref", "meshns.dataplane.exposition"}
    assert late.isdisjoint({m.split(".")[0] for m in mods} | mods)


def test_later_imports_are_checked_at_start() -> None:
    assert missing_packages(LATER_IMPORTS) == []
    assert missing_packages(["h11", "meshns_no_such_package"]) == ["meshns_no_such_package"]
