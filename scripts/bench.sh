#!/usr/bin/env bash
# Benchmark: direct vs meshns vs HAProxy on this machine, in namespaces of its own, and for the
# request rows the Python floor (scripts/bench/floor_proxy.py: TLS and llhttp, no mesh features).
#   sudo scripts/bench.sh [--quick] [--out DIR] [--only scale] [--cleanup-only]
# --quick: one short round and a small scale section (CI smoke). Default output: bench-results/
# (bench.json, bench.png, bench.txt). Last comes the scale section: 100 pods created one after
# another (create -> ready), then 10,000 idle keep-alive connections held through one sidecar
# (--quick: 5 pods, 500 connections). --only scale: just the private mesh and the scale
# section (for working on it; the other rows read "-"). Exit 0 whether or not meshns meets the targets; non-zero
# only when the benchmark itself failed (130 when interrupted).
# The work is in scripts/bench/ (Python); this wrapper checks root, installs what is missing
# and, whatever happens to the Python process, removes anything of the benchmark left behind.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "bench.sh: run as root (sudo $0)" >&2
  exit 1
fi

# Provision only when something is missing: provision.sh reinstalls meshns into the venv,
# which costs seconds a --quick run cannot spare.
need_provision=0
for tool in wrk h2load nginx haproxy curl openssl iptables-legacy-restore; do
  command -v "$tool" >/dev/null 2>&1 || need_provision=1
done
[ -x .venv/bin/meshns ] || need_provision=1
if [ "$need_provision" = 1 ]; then
  scripts/provision.sh --bench
fi
# The chart is drawn with matplotlib in the project's venv (not a meshns dependency).
if ! .venv/bin/python -c 'import matplotlib' >/dev/null 2>&1; then
  echo "bench: installing matplotlib into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check matplotlib
fi

# Every meshns process (the CLI, each pod's supervisor and sidecar) imports from bytecode, as a
# regular install does (pip compiles a wheel's modules when installing, not an editable install's).
# Python writes the bytecode at the first import otherwise, but not with PYTHONDONTWRITEBYTECODE set
# (or a checkout it cannot write to): then each of those processes compiles every meshns module it
# imports from source at every start, about 0.15 s of CPU per `meshns create`, and the scale section
# would measure the compiler. compileall rewrites only what changed since it last ran.
.venv/bin/python -m compileall -q meshns dataplane netns intercept mtls cli cluster >/dev/null
# The code dataclasses generates for our classes' methods, compiled once here rather than at every
# process start (meshns/fncache.py: ~1 ms per class, ~50 classes in a sidecar, more in the CLI).
.venv/bin/python -c 'import sys; from meshns import fncache; sys.exit(fncache.main())'

# Safety net: the Python side cleans up on every exit it sees (errors, Ctrl-C, SIGTERM); this
# covers the one it cannot see (SIGKILL, OOM) by removing whatever carries the benchmark's names.
cleanup() {
  PYTHONPATH=scripts .venv/bin/python -m bench.main --cleanup-only || true
}
trap cleanup EXIT

# Run in the background and wait, so a signal to this script reaches the benchmark at once (bash
# runs traps only after a foreground child ends): Ctrl-C, TERM or HUP become a TERM to Python,
# which stops measuring, cleans up and exits 130.
set +e
PYTHONPATH=scripts .venv/bin/python -m bench.main "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' INT TERM HUP
while :; do
  wait "$child"
  rc=$?
  kill -0 "$child" 2>/dev/null || break  # wait also returns when a trapped signal arrives
done
exit "$rc"
