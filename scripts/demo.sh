#!/usr/bin/env bash
# The main job: install what is needed, then show a mesh on the embedded defaults
# (state in /var/lib/meshns, bridge meshns0, pods in 10.188.0.0/16): an unmodified web server
# and an unmodified SMTP-style banner server in pods, reached by name from a client pod
# through both sidecars (mTLS between them); an AuthorizationPolicy; a sidecar killed and
# restarted; everything removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/provision.sh
export PATH="$PWD/.venv/bin:$PATH"

pods=(demo-web demo-smtp demo-client)
www=$(mktemp -d)
cleanup() {
  meshns delete "${pods[@]}" >/dev/null 2>&1 || true
  meshns service delete web >/dev/null 2>&1 || true
  meshns gc >/dev/null 2>&1 || true
  rm -rf "$www"
}
trap cleanup EXIT
for p in "${pods[@]}"; do meshns delete "$p" >/dev/null 2>&1 || true; done

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@"; }

echo "hello from an unmodified python http.server in pod demo-web" > "$www/index.html"
chmod 755 "$www"

run meshns create demo-web --service web:8080 -- python3 -m http.server 8080 --directory "$www"
run meshns create demo-smtp -- socat TCP-LISTEN:2525,reuseaddr,fork "SYSTEM:echo '220 demo-smtp ESMTP ready'"
run meshns create demo-client
run meshns list

say "meshns exec demo-client -- curl -s http://web:8080/      # the service web, balanced per request"
meshns exec demo-client -- curl -sS --retry 20 --retry-all-errors --retry-delay 0 http://web:8080/
run meshns service list

say "meshns exec demo-client -- nc -d -w 5 demo-smtp 2525      # the client sends nothing"
for _ in $(seq 50); do
  out=$(meshns exec demo-client -- nc -d -w 5 demo-smtp 2525 || true)
  [ -n "$out" ] && break
  sleep 0.1
done
echo "$out"

run meshns status demo-client

say "meshns metrics demo-client | grep '^istio_requests_total'     # Istio's metric names and labels"
meshns metrics demo-client | grep '^istio_requests_total' || true

run meshns explain demo-client web:8080

# mTLS: every pod has a SPIFFE identity; the app sees who called it, verified by the sidecars.
run meshns cert show demo-web
say "meshns exec demo-client -- curl -s http://web:8080/ -w '%{http_code}' with an AuthorizationPolicy denying demo-client"
policy="$www/deny.yaml"
cat > "$policy" <<'YAML'
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: demo-deny-client, namespace: default}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/demo-client"]}}]
YAML
cat "$policy"
meshns apply -f "$policy"
for _ in $(seq 30); do
  code=$(meshns exec demo-client -- curl -s -o /dev/null -w '%{http_code}' http://web:8080/ || true)
  [ "$code" = 403 ] && break
  sleep 0.1
done
echo "HTTP $code (denied by the policy)"
meshns delete -f "$policy"

sidecar=$(meshns status demo-client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["sidecar_pid"])')
say "kill -9 $sidecar     # the client's sidecar dies; its supervisor restarts it"
kill -9 "$sidecar"
for _ in $(seq 50); do
  if meshns exec demo-client -- curl -sf --max-time 2 http://web:8080/ >/dev/null 2>&1; then break; fi
  sleep 0.1
done
meshns status demo-client | grep -E "^sidecar:"
meshns exec demo-client -- curl -sS http://web:8080/

run meshns delete "${pods[@]}"
run meshns service delete web
run meshns gc
echo
echo "demo done: pods created, traffic through the mesh (mTLS), a policy applied, sidecar restarted, everything removed."
