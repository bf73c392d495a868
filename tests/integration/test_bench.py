"""The benchmark itself, as a smoke run (scripts/bench.sh --quick): it builds its topology, measures
the three paths, writes its three outputs, and leaves nothing behind. Figures are not judged here
(tests never assert performance); only that every case produced one."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]


def _leftovers() -> list[str]:
    found = [ns for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
             if ns.startswith(("mb-", "mbx-"))]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    found += [word for word in ("mbench0", "mbench1", "vbx-") if word in links]
    return found


def test_quick_benchmark_runs_end_to_end_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    done = subprocess.run(["bash", str(REPO / "scripts" / "bench.sh"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((out / "bench.json").read_text())
    med = data["median"]
    for case in ("direct", "meshns", "haproxy"):
        assert med[f"rps/{case}"]["rps"] > 0 and med[f"rps/{case}"]["errors"] == 0, med[f"rps/{case}"]
        fixed = med[f"fixed/{case}"]
        assert fixed["failed"] == 0 and 0 < fixed["p50_ms"] <= fixed["p90_ms"] <= fixed["p99_ms"], fixed
    assert {b["verdict"] for b in data["bar"]} <= {"met", "NOT met"} and len(data["bar"]) == 7
    assert (out / "bench.png").stat().st_size > 10_000 and "bar (issue 7 targets" in (out / "bench.txt").read_text()
    assert not _leftovers(), _leftovers()
