#!/usr/bin/env bash
# Installs everything meshns needs on a fresh Debian 12 / Ubuntu machine, as root:
# the system packages, then the Python environment in .venv with meshns installed into it,
# and /usr/local/bin/meshns pointing at it. Safe to run again; it only adds what is missing.
#   --test   also the packages the test suite uses (vagrant for `vagrant validate`).
#   --bench  also what scripts/bench.sh drives: wrk, h2load, nginx and HAProxy (the baseline).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "provision.sh: run as root (sudo $0)" >&2
  exit 1
fi

packages=(
  python3 python3-venv python3-dev gcc       # the venv; uvloop/httptools wheels need nothing more
  iproute2 iptables nftables kmod            # namespaces, veth, bridge; the interception rules
  procps psmisc ca-certificates
  curl socat netcat-openbsd                  # unmodified clients and servers used by demo and tests
)
if [ "${1:-}" = "--test" ]; then
  packages+=(tcpdump vagrant prometheus)   # prometheus: the tests scrape sidecars with a real one
  packages+=(nghttp2-client nghttp2-server)  # h2load, nghttp, nghttpd: HTTP/2 (h2c) load and servers
  packages+=(wrk nginx-light haproxy)         # the benchmark's smoke run (scripts/bench.sh --quick)
  packages+=(etcd-server etcd-client)         # multi-host tests: a real etcd (and etcdctl)
fi
if [ "${1:-}" = "--multihost" ]; then
  packages+=(etcd-server etcd-client)         # a host of a multi-host mesh (etcd for the first one)
fi
if [ "${1:-}" = "--bench" ]; then
  # wrk: closed-loop max rate; h2load: fixed-rate latency; nginx: the app; haproxy: the baseline.
  packages+=(wrk nghttp2-client nginx-light haproxy)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "provision: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The tests start their own Prometheus on loopback; the packaged service is not ours to run.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  # Likewise the packaged nginx and haproxy services: the benchmark starts its own, in namespaces.
  for svc in nginx haproxy etcd; do
    if [[ " ${missing[*]} " == *" $svc"* ]] && command -v systemctl >/dev/null 2>&1; then
      systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
  done
fi

# Debian's python3, not whatever python3 comes first on PATH: the same interpreter everywhere.
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv .venv
fi
log=$(mktemp)
if ! { .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel &&
       .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'; } >"$log" 2>&1; then
  cat "$log" >&2
  rm -f "$log"
  echo "provision: pip install failed" >&2
  exit 1
fi
rm -f "$log"
# The editable install's modules as bytecode now (pip compiles a regular install's, not these): so
# meshns starts from bytecode even where Python may not write it at the first import
# (PYTHONDONTWRITEBYTECODE, a read-only checkout); see scripts/bench.sh.
.venv/bin/python -m compileall -q meshns dataplane netns intercept mtls cli cluster >/dev/null
# The code dataclasses generates for our classes' methods, compiled once here rather than at every
# process start (meshns/fncache.py: ~1 ms per class, ~50 classes in a sidecar, more in the CLI).
.venv/bin/python -c 'import sys; from meshns import fncache; sys.exit(fncache.main())'
ln -sf "$PWD/.venv/bin/meshns" /usr/local/bin/meshns
echo "provision: ready ($(.venv/bin/meshns --version))"
