"""Bad input against real pods, while a meshed client keeps being served.

Pods: "papp" (service "open", PERMISSIVE, short request-headers timeout and a 1 KiB body limit
set by `create`), "sapp" (service "strict", STRICT mTLS), both running
tests/integration/apps/backend.py unmodified (pod names differ from service names: a pod's name
resolves to the pod, a service's to its VIP); "client", a curl loop against both services
through its sidecar that must not see one failure during the whole attack; "attacker", tests/integration/apps/badclient.py (raw sockets), created with
--exclude-outbound-ports 9080 so that its connections to a pod's port 9080 leave it untouched
while the services' port 80 still goes through its sidecar. The attacks:

    the "open" service VIP through the attacker's own sidecar (outbound listener): every bad
        request of the table refused there, before anything leaves the pod;
    the "papp" pod's plaintext port (its inbound listener): the same table, the body limit,
        and a slowloris;
    the "sapp" pod's port (its mTLS listener): TLS garbage, truncated ClientHellos (then a
        close, or silence until the handshake timeout), a TLS client without a certificate.

A refusal made by a sidecar carries the response flag DPE, which badclient checks, so an answer
from the app (the bad request went through) shows as "400-app". Counters come from each
sidecar's /stats, log lines from the pod logs.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import Mesh, wait_for

pytestmark = pytest.mark.root

APPS = Path(__file__).parent / "apps"
PY = sys.executable
BADCLIENT = str(APPS / "badclient.py")

_spec = importlib.util.spec_from_file_location("badclient", APPS / "badclient.py")
assert _spec is not None and _spec.loader is not None
BAD: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(BAD)

STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: default}
spec:
  selector: {matchLabels: {app: strict}}
  mtls: {mode: STRICT}
"""
# The client's loop: one line per request, "<status> <url>"; TERM ends it after the request in flight.
LOOP = """trap 'exit 0' TERM
while :; do
  for u in http://open/whoami http://strict/whoami; do
    curl -s -o /dev/null -m 5 -w "%{http_code} $u\\n" "$u" || echo "failed $u"
  done
done
"""


def backend(name: str) -> list[str]:
    return [PY, str(APPS / "backend.py"), "--name", name, "--port", "9080"]


def ip_of(mesh: Mesh, pod: str) -> str:
    return str({p["name"]: p["ip"] for p in mesh.pods()}[pod])


def pod_log(mesh: Mesh, pod: str) -> str:
    return Path(mesh.status(pod)["log"]).read_text(errors="replace")


def attack(mesh: Mesh, host: str, port: int, suite: str, timeout: float = 15.0) -> list[dict[str, str]]:
    out = mesh.exec("attacker", PY, BADCLIENT, host, str(port), "--suite", suite, "--timeout", str(timeout),
                    timeout=180).stdout
    return [json.loads(line) for line in out.splitlines()]


def wrong(results: list[dict[str, str]]) -> list[dict[str, str]]:
    return [r for r in results if r["got"] not in r["expect"].split("|")]


def test_bad_input_on_every_listener_while_a_client_is_served(mesh: Mesh, tmp_path: Path) -> None:
    mesh.run("create", "papp", "--service", "open:80:9080", "--label", "app=open",
             "--request-headers-timeout", "1", "--max-request-body", "1K", "--", *backend("open"))
    mesh.run("create", "sapp", "--service", "strict:80:9080", "--label", "app=strict", "--", *backend("strict"))
    cfg = tmp_path / "strict.yaml"
    cfg.write_text(STRICT)
    mesh.run("apply", "-f", str(cfg))
    mesh.run("create", "client")
    mesh.run("create", "attacker", "--exclude-outbound-ports", "9080")
    sidecar_json = json.loads((mesh.state_dir / "pods" / "papp" / "sidecar.json").read_text())
    assert (sidecar_json["max_request_body_bytes"], sidecar_json["request_headers_timeout_s"]) == (1024, 1.0)
    open_ip, strict_ip = ip_of(mesh, "papp"), ip_of(mesh, "sapp")
    # STRICT is in force once plaintext to the strict pod is refused
    wait_for(lambda: mesh.exec("attacker", "curl", "-s", "-m", "2", f"http://{strict_ip}:9080/whoami",
                               check=False).stdout != "strict", what="STRICT on the strict pod")
    assert mesh.exec("client", "curl", "-sS", "-m", "5", "http://strict/whoami").stdout == "strict"

    loop = mesh.popen("exec", "client", "--", "sh", "-c", LOOP)
    try:
        time.sleep(0.5)
        with ThreadPoolExecutor(max_workers=5) as pool:  # all at once, as attacks come
            runs = [pool.submit(attack, mesh, host, port, suite) for host, port, suite in (
                ("open", 80, "http"), (open_ip, 9080, "http"), (open_ip, 9080, "body"), (open_ip, 9080, "slow"),
                (strict_ip, 9080, "tls"))]
            outbound, inbound, body, slow, tls = (r.result() for r in runs)
        time.sleep(0.5)
    finally:
        loop.terminate()
        out, _ = loop.communicate(timeout=30)
    served = out.decode().splitlines()

    assert len(outbound) == len(inbound) == len(BAD.CASES)
    assert wrong(outbound) == []
    assert wrong(inbound) == []
    assert wrong(body) == [] and len(body) == len(BAD.BODY_CASES)
    assert wrong(slow) == []
    assert wrong(tls) == [] and len(tls) == 4
    # the meshed client never failed, to either service, during the whole attack
    assert served and all(line.startswith("200 ") for line in served), [x for x in served if not x.startswith("200")]
    assert {line.split()[1] for line in served} == {"http://open/whoami", "http://strict/whoami"}

    want = Counter(status for _, _, status in BAD.CASES)
    att = mesh.stats("attacker")
    assert att["http_bad_requests"] == len(BAD.CASES)
    assert {s: att[f"http_{s}"] for s in want} == dict(want)
    srv = mesh.stats("papp")
    assert srv["http_bad_requests"] == len(BAD.CASES) + len(BAD.BODY_CASES) + 1
    assert srv["http_413"] == len(BAD.BODY_CASES) and srv["http_408"] == 1
    assert srv["http_400"] == want[400]
    assert mesh.stats("sapp")["tls_handshake_failures"] >= 4
    assert "refused outbound request from" in pod_log(mesh, "attacker")
    log = pod_log(mesh, "papp")
    assert f"refused inbound request from {ip_of(mesh, 'attacker')}:" in log
    assert "408 request head not complete" in log
    assert "mTLS handshake with" in pod_log(mesh, "sapp")
