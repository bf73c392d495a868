"""mTLS between sidecars, in real namespaces: encryption on the wire, who is refused and why,
STRICT/PERMISSIVE, the verified client identity, authorization, revocation, and certificate and
root rotation under load."""

from __future__ import annotations

import json
import secrets
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Mesh, wait_for

from meshns.mtls.ca import CertAuthority, key_pem, new_key
from meshns.mtls.identity import SpiffeId

APPS = Path(__file__).parent / "apps"
PY = sys.executable


def backend(name: str, port: int = 9080) -> list[str]:
    return [PY, str(APPS / "backend.py"), "--name", name, "--port", str(port)]


def ip_of(mesh: Mesh, pod: str) -> str:
    return str({p["name"]: p["ip"] for p in mesh.pods()}[pod])


def gateway(mesh: Mesh) -> str:
    return mesh.cidr.rsplit(".", 1)[0] + ".1"


def pod_log(mesh: Mesh, pod: str) -> str:
    return Path(mesh.status(pod)["log"]).read_text(errors="replace")


def apply(mesh: Mesh, tmp_path: Path, text: str) -> None:
    f = tmp_path / f"cfg-{secrets.token_hex(3)}.yaml"
    f.write_text(text)
    mesh.run("apply", "-f", str(f))


@pytest.fixture
def pair(mesh: Mesh) -> Iterator[Mesh]:
    """server (backend on 9080, service web) and client (no app)."""
    mesh.run("create", "server", "--service", "web:9080", "--", *backend("server"))
    mesh.run("create", "client")
    yield mesh


def tls_client(mesh: Mesh, cert: tuple[str, str] | None, bundle: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if cert is not None:
        d = mesh.state_dir / f"client-{secrets.token_hex(3)}"
        d.mkdir()
        (d / "c.pem").write_text(cert[0])
        (d / "k.pem").write_text(cert[1])
        ctx.load_cert_chain(str(d / "c.pem"), str(d / "k.pem"))
    return ctx


def mesh_cert(mesh: Mesh, sa: str, **times: float) -> tuple[str, str]:
    """A certificate from the test mesh's own CA (what a workload would hold) for ns default/sa."""
    authority = CertAuthority.load(mesh.state_dir / "ca")
    key = new_key()
    issued = authority.issue(SpiffeId(authority.trust_domain, "default", sa), key.public_key(), **times)
    return issued.cert_pem, key_pem(key)


def foreign_cert(tmp_path: Path, sa: str) -> tuple[str, str]:
    other = CertAuthority.ensure(tmp_path / "other-ca")
    key = new_key()
    issued = other.issue(SpiffeId("cluster.local", "default", sa), key.public_key())
    return issued.cert_pem, key_pem(key)


def http_over_tls(ctx: ssl.SSLContext, ip: str, port: int, path: str = "/whoami") -> str:
    """GET over TLS straight to the pod (from the host): the response, or the error's name."""
    try:
        with socket.create_connection((ip, port), timeout=5) as raw, ctx.wrap_socket(raw) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return data.decode(errors="replace") or "closed"
    except (OSError, ssl.SSLError) as exc:
        return f"refused: {type(exc).__name__}: {exc}"


def test_payload_never_crosses_in_clear_between_meshed_pods(pair: Mesh, tmp_path: Path) -> None:
    mesh = pair
    secret = f"MESHNS-SECRET-{secrets.token_hex(8)}"
    pcap = tmp_path / "bridge.pcap"
    # A non-meshed destination: a plain server on the bridge's own address (made by this test's mesh).
    plain = subprocess.Popen([PY, "-m", "http.server", "18080", "--bind", gateway(mesh)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    # --immediate-mode: packets reach the file as they come, not in kernel ring-buffer blocks that a
    # terminated tcpdump may never write out.
    dump = subprocess.Popen(["tcpdump", "--immediate-mode", "-i", mesh.bridge, "-U", "-w", str(pcap), "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert dump.stderr is not None
        assert "listening on" in dump.stderr.readline().decode()  # tcpdump says so once it captures
        got = mesh.exec("client", "curl", "-sS", "-H", f"X-Secret: {secret}", "http://server:9080/headers").stdout
        assert f"X-Secret: {secret}" in got  # delivered, decrypted, to the app
        assert mesh.exec("client", "curl", "-sS", "-H", f"X-Secret: {secret}", "http://web:9080/headers").stdout
        wait_for(lambda: mesh.exec("client", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                   "-H", f"X-Plain: {secret}", f"http://{gateway(mesh)}:18080/", check=False)
                 .stdout == "200", what="the plain server")
        # every packet so far is on disk once the last one (the plain exchange) is
        wait_for(lambda: f"X-Plain: {secret}".encode() in pcap.read_bytes(), what="the plain request captured")
    finally:
        dump.terminate()
        dump.wait(timeout=10)
        plain.kill()
        plain.wait()
    captured = pcap.read_bytes()
    assert f"X-Plain: {secret}".encode() in captured  # the capture works: plaintext is visible
    assert f"X-Secret: {secret}".encode() not in captured  # between sidecars it never is
    assert mesh.stats("client")["tls_out"] >= 2 and mesh.stats("server")["tls_in"] >= 2


def test_who_is_refused_and_why(pair: Mesh, tmp_path: Path) -> None:
    mesh = pair
    ip = ip_of(mesh, "server")
    wait_for(lambda: "server" in http_over_tls(tls_client(mesh, mesh_cert(mesh, "probe")), ip, 9080),
             what="a mesh client served")
    now = time.time()
    cases = {
        "no certificate": (None, "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
        "expired": (mesh_cert(mesh, "old", not_before=now - 7200, not_after=now - 3600), "expired"),
        "another CA": (foreign_cert(tmp_path, "client"), "unable to get local issuer certificate"),
    }
    for case, (cert, _) in cases.items():
        got = http_over_tls(tls_client(mesh, cert), ip, 9080)
        assert got.startswith("refused") or got == "closed", (case, got)
    mesh.run("identity", "revoke", "spiffe://cluster.local/ns/default/sa/mallory")
    mallory = mesh_cert(mesh, "mallory")
    wait_for(lambda: not http_over_tls(tls_client(mesh, mallory), ip, 9080).startswith("HTTP/1.1 200"),
             what="the revoked identity refused")
    log = wait_for(lambda: (t := pod_log(mesh, "server")).count("mTLS") >= 4 and t, what="refusals logged")
    for case, (_, reason) in cases.items():
        assert reason in log, (case, log[-3000:])
    assert "spiffe://cluster.local/ns/default/sa/mallory is revoked" in log
    stats = mesh.stats("server")
    assert stats["tls_handshake_failures"] >= 3 and stats["tls_in_rejected"] >= 1


def test_secure_naming_refuses_a_valid_certificate_of_the_wrong_workload(mesh: Mesh, tmp_path: Path) -> None:
    # "impostor" is a meshed pod, but port 9443 is outside its sidecar: whatever listens there
    # answers TLS with a valid mesh certificate -- of another workload ("server").
    mesh.run("create", "client")
    mesh.run("create", "server", "--", *backend("server"))
    cert, key = mesh_cert(mesh, "server")
    d = tmp_path / "impostor"
    d.mkdir()
    (d / "c.pem").write_text(cert)
    (d / "k.pem").write_text(key)
    mesh.run("create", "impostor", "--exclude-inbound-ports", "9443", "--", "openssl", "s_server", "-quiet",
             "-accept", "9443", "-cert", str(d / "c.pem"), "-key", str(d / "k.pem"), "-tls1_3", "-www")
    time.sleep(1.0)
    got = mesh.exec("client", "curl", "-sS", "-m", "5", "http://impostor:9443/", check=False)
    assert got.returncode != 0  # the connection is cut, nothing reaches the impostor
    log = wait_for(lambda: "mTLS peer refused" in (t := pod_log(mesh, "client")) and t, what="refusal logged")
    assert "expected spiffe://cluster.local/ns/default/sa/impostor" in log
    assert mesh.stats("client")["tls_peer_rejected"] >= 1
    # the real "server" identity at the real server's address is accepted
    assert mesh.exec("client", "curl", "-sS", "http://server:9080/whoami").stdout == "server"


def test_strict_refuses_plaintext_permissive_serves_it(pair: Mesh, tmp_path: Path) -> None:
    mesh = pair
    url = f"http://{ip_of(mesh, 'server')}:9080/whoami"
    host_curl = ["curl", "-sS", "-m", "5", url]
    wait_for(lambda: subprocess.run(host_curl, capture_output=True, text=True).stdout == "server",
             what="plaintext from the host served (PERMISSIVE)")
    apply(mesh, tmp_path, """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: server-strict, namespace: default}
spec:
  selector: {matchLabels: {app: server}}
  mtls: {mode: STRICT}
""")
    # the selector matches nothing yet: still served
    time.sleep(1.0)
    assert subprocess.run(host_curl, capture_output=True, text=True).stdout == "server"
    apply(mesh, tmp_path, """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec:
  mtls: {mode: STRICT}
""")
    wait_for(lambda: subprocess.run(host_curl, capture_output=True, text=True).returncode != 0,
             what="plaintext refused under STRICT")
    assert mesh.exec("client", "curl", "-sS", "http://web:9080/whoami").stdout == "server"  # mTLS still fine
    assert "refused: mTLS mode STRICT" in pod_log(mesh, "server")
    assert mesh.stats("server")["plaintext_refused"] >= 1


def test_client_identity_header_cannot_be_forged(pair: Mesh) -> None:
    mesh = pair
    got = mesh.exec("client", "curl", "-sS", "-H", "x-meshns-client-id: spiffe://cluster.local/ns/default/sa/admin",
                    "-H", "X-Forwarded-Client-Cert: URI=spiffe://evil", "http://web:9080/headers").stdout
    lines = got.lower().splitlines()
    assert "x-meshns-client-id: spiffe://cluster.local/ns/default/sa/client" in lines
    assert not any("sa/admin" in line or "spiffe://evil" in line for line in lines)
    assert any(line.startswith("x-forwarded-client-cert: by=spiffe://cluster.local/ns/default/sa/server;"
                               "uri=spiffe://cluster.local/ns/default/sa/client") for line in lines)
    # from outside the mesh (plaintext), the forged header is dropped and none is added
    plain = subprocess.run(["curl", "-sS", "-H", "x-meshns-client-id: spiffe://x/ns/a/sa/b",
                            f"http://{ip_of(mesh, 'server')}:9080/headers"], capture_output=True, text=True).stdout
    assert "x-meshns-client-id" not in plain.lower()


def test_authorization_policies_http_and_tcp(pair: Mesh, tmp_path: Path) -> None:
    mesh = pair
    mesh.run("create", "other", "--service-account", "intruder")
    apply(mesh, tmp_path, """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-readers, namespace: default}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/client"]}}]
    to: [{operation: {methods: [GET], paths: ["/whoami", "/headers*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-status, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/status/*"]}}]
""")
    def code(pod: str, path: str) -> str:
        return mesh.exec(pod, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://web:9080{path}",
                         check=False).stdout
    wait_for(lambda: code("other", "/whoami") == "403", what="the policy in force")
    assert code("client", "/whoami") == "200"
    assert code("client", "/status/200") == "403"  # DENY wins over the ALLOW
    assert code("client", "/count") == "403"  # no ALLOW rule matches
    head = mesh.exec("other", "curl", "-sS", "-i", "http://web:9080/whoami").stdout.lower()
    assert "x-meshns-denied-reason:" in head and "rbac: access denied" in head
    # TCP: an ALLOW rule with HTTP fields never matches opaque traffic -> the connection is closed
    tcp = mesh.exec("client", "sh", "-c", "printf 'hello\\r\\n' | nc -w 2 server 9080; echo rc=$?", check=False).stdout
    assert "hello" not in tcp
    log = pod_log(mesh, "server")
    assert "sa/intruder) denied" in log and "denied:" in log
    stats = mesh.stats("server")
    assert stats["authz_denied_http"] >= 3 and stats["authz_denied_tcp"] >= 1


def test_revocation_stops_new_requests_within_seconds(pair: Mesh) -> None:
    mesh = pair
    assert mesh.exec("client", "curl", "-sS", "http://web:9080/whoami").stdout == "server"
    mesh.run("identity", "revoke", "client")
    t0 = time.monotonic()
    wait_for(lambda: mesh.exec("client", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                               "http://web:9080/whoami", check=False).stdout == "403", what="revocation in force")
    assert time.monotonic() - t0 < 5
    listed = json.loads(mesh.run("identity", "list", "-o", "json").stdout)
    assert {"pod": "client", "identity": "spiffe://cluster.local/ns/default/sa/client", "revoked": "yes"} in listed
    mesh.run("identity", "unrevoke", "client")
    wait_for(lambda: mesh.exec("client", "curl", "-sS", "http://web:9080/whoami", check=False).stdout == "server",
             what="restored")


# Bytes that cannot begin an HTTP request: the client sidecar pipes the connection as opaque TCP
# over the one mTLS connection it dialled for it (an HTTP request may take a pooled one instead),
# and the backend answers them with its 400 page (http.server sends a line it cannot parse no
# status line, as to HTTP/0.9). Prints what came back, "closed" or the error's name.
OPAQUE = """import socket
s = socket.create_connection(("web", 9080), timeout=5)
s.sendall(b"\\x00not http\\n")
try:
    print(s.recv(12).decode(errors="replace") or "closed")
except OSError as exc:
    print(type(exc).__name__)
"""
SERVED = "<!DOCTYPE HT"


def test_sessions_resume_between_sidecars_and_every_check_still_holds(pair: Mesh) -> None:
    """The client sidecar resumes the TLS session of its last connection to a peer sidecar (no
    signatures, no chain to verify); revocation still refuses a resumed client, and an identity
    or trust update forgets every session, so the next connection is verified in full."""
    mesh = pair

    def tcp() -> str:
        return mesh.exec("client", PY, "-c", OPAQUE).stdout.strip()

    def counts() -> dict[str, int]:
        c, s = mesh.stats("client"), mesh.stats("server")
        return {"out": c["tls_out"], "out_resumed": c["tls_out_resumed"], "in": s["tls_in"],
                "in_resumed": s["tls_in_resumed"], "in_rejected": s["tls_in_rejected"],
                "client_updates": c["tls"]["updates"], "server_updates": s["tls"]["updates"]}

    def delta(before: dict[str, int]) -> dict[str, int]:
        return {k: v - before[k] for k, v in counts().items()}

    before = counts()
    assert tcp() == SERVED  # a full handshake; its session is kept
    assert delta(before)["out"] == 1 and delta(before)["out_resumed"] == 0
    before = counts()
    assert [tcp() for _ in range(3)] == [SERVED] * 3
    d = delta(before)
    assert d["out"] == d["out_resumed"] == d["in"] == d["in_resumed"] == 3, d

    # A certificate or bundle update (here the root's) builds new contexts on both sides.
    mesh.run("ca", "rotate", timeout=60)
    wait_for(lambda: delta(before)["client_updates"] > 0 and delta(before)["server_updates"] > 0,
             what="both sidecars took the new identity")
    before = counts()
    assert tcp() == SERVED
    d = delta(before)
    assert d["out"] == d["in"] == 1 and d["out_resumed"] == d["in_resumed"] == 0, d  # verified in full
    wait_for(lambda: tcp() == SERVED and delta(before)["out_resumed"] > 0, what="sessions resumed again")

    mesh.run("identity", "revoke", "client")
    wait_for(lambda: tcp() != SERVED, what="revocation in force")
    before = counts()
    assert tcp() != SERVED
    d = delta(before)
    # The client resumed its session, and the server still refused it.
    assert d["out"] == d["out_resumed"] == d["in_rejected"] == 1 and d["in"] == 0, d


def test_certificates_and_root_rotate_under_load_without_a_failed_request(mesh: Mesh) -> None:
    mesh.run("create", "server", "--cert-ttl", "4s", "--", *backend("server"))
    mesh.run("create", "client", "--cert-ttl", "4s")
    first = json.loads(mesh.run("cert", "show", "server", "-o", "json").stdout)
    assert first["identity"] == "spiffe://cluster.local/ns/default/sa/server"
    assert first["not_after"] - first["not_before"] <= 4 + 60 + 1  # 60 s backdated for clock skew
    # Connection: close -> every request is a new connection and a new mTLS handshake.
    load = subprocess.Popen(
        ["ip", "netns", "exec", mesh.netns("client"), PY, str(APPS / "load.py"), "http://server:9080/whoami",
         "-n", "1000000", "--duration", "14", "-c", "4", "--pace", "0.01", "-H", "Connection: close"],
        stdout=subprocess.PIPE, text=True)
    serials = {first["serial"]}
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            serials.add(json.loads(mesh.run("cert", "show", "server", "-o", "json").stdout)["serial"])
            time.sleep(0.5)
        mesh.run("ca", "rotate", timeout=60)
        out, _ = load.communicate(timeout=120)
    finally:
        if load.poll() is None:
            load.kill()
    result = json.loads(out)
    assert result["failures"] == [], result["failures"][:5]
    assert list(result["status"]) == ["200"] and result["status"]["200"] > 300
    assert len(serials) >= 3  # renewed at half of the 4 s lifetime, twice or more
    after = json.loads(mesh.run("cert", "show", "server", "-o", "json").stdout)
    assert after["roots"] == 2  # old and new root trusted during the overlap
    roots = json.loads(mesh.run("ca", "show", "-o", "json").stdout)["roots"]
    assert sorted(r["state"] for r in roots) == ["active", "retiring"]
    assert mesh.stats("server")["tls_in"] > 300
