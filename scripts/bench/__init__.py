"""meshns benchmark harness (scripts/bench.sh): direct vs meshns vs HAProxy on one machine.

Pure parts (parsing, rendering, verdicts) live in parse.py, render.py and report.py and are
unit-tested in test_parse.py; topology.py and measure.py touch the machine; main.py drives.
"""
