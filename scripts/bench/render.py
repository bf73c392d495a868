"""Config files the benchmark writes, as pure functions of their inputs (tested in test_parse.py).

The same nginx config serves every case, so the app costs the same everywhere; the two HAProxy
configs mirror what a meshns sidecar pair does (see haproxy_client / haproxy_server).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshns.intercept.plan import plan_rules
from meshns.intercept.render import render_save
from meshns.intercept.spec import InterceptSpec

# 1 KB for the request-rate and latency cases (Istio's published setup), 1 MiB for bulk.
SMALL_PATH = "/1k"
SMALL_SIZE = 1024
BULK_PATH = "/1m"
BULK_SIZE = 1024 * 1024


def nginx_conf(*, root: str, run_dir: str, port: int = 80) -> str:
    """One worker (the proxies under test get one core's worth of thread each too), no access log
    (the app's logging is not what is measured), keep-alive effectively unbounded so neither the
    load generator nor a proxy's pool reconnects mid-run, and sendfile, as a real static server has.
    ``run_dir`` holds the pid file, error log and temp dirs, one per instance."""
    return f"""# meshns bench: the app behind every case
worker_processes 1;
pid {run_dir}/nginx.pid;
error_log {run_dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 10000000;
    keepalive_timeout 600s;
    client_body_temp_path {run_dir}/body;
    proxy_temp_path {run_dir}/proxy;
    fastcgi_temp_path {run_dir}/fastcgi;
    uwsgi_temp_path {run_dir}/uwsgi;
    scgi_temp_path {run_dir}/scgi;
    default_type application/octet-stream;
    server {{
        listen {port};
        root {root};
    }}
}}
"""


@dataclass(frozen=True)
class HaproxyTls:
    """Files for one side's TLS: its certificate+key (one PEM), the CA that must sign the peer,
    and the name the client checks in the server's certificate (secure naming, as meshns does
    with the SPIFFE URI)."""

    cert_pem: str
    ca_pem: str
    server_name: str


def _haproxy_global(user: str, group: str) -> str:
    # nbthread 1: one meshns sidecar is one Python process with one event loop, so one thread per
    # HAProxy is the like-for-like baseline. user/group: HAProxy binds and reads its keys as root,
    # then runs as its own uid, which the interception rules exempt (as meshns exempts 1337).
    return f"""global
    nbthread 1
    user {user}
    group {group}
    maxconn 8192
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3

defaults
    mode http
    option http-keep-alive
    timeout connect 1s
    timeout client 1h
    timeout server 1h
    timeout http-keep-alive 600s
    timeout http-request 30s
"""


def haproxy_client(*, user: str, group: str, outbound_port: int, tls: HaproxyTls | None,
                   plain_dst: str | None = None) -> str:
    """The client-side proxy: listens where the outbound rule redirects (15001) and sends each
    request to the connection's original destination (``server 0.0.0.0:0``: HAProxy reads it with
    SO_ORIGINAL_DST), over TLS with a client certificate when ``tls`` is given.

    ``plain_dst``: an address reached in plaintext even when ``tls`` is set, so one client proxy
    serves both the mTLS and the no-mTLS bulk case (as one meshns client sidecar does, by the
    destination's PeerAuthentication) and nothing is restarted between cases.
    """
    ssl = ""
    if tls is not None:
        ssl = (f" ssl crt {tls.cert_pem} ca-file {tls.ca_pem} verify required"
               f" verifyhost {tls.server_name} alpn http/1.1")
    lines = [_haproxy_global(user, group), "frontend outbound",
             f"    bind 0.0.0.0:{outbound_port}"]
    if plain_dst is not None and tls is not None:
        lines.append(f"    use_backend original_dst_plain if {{ dst {plain_dst} }}")
    lines += ["    default_backend original_dst", "", "backend original_dst",
              f"    server s 0.0.0.0:0{ssl}", ""]
    if plain_dst is not None and tls is not None:
        lines += ["backend original_dst_plain", "    server s 0.0.0.0:0", ""]
    return "\n".join(lines)


def haproxy_server(*, user: str, group: str, inbound_port: int, app_port: int,
                   tls: HaproxyTls | None) -> str:
    """The server-side proxy: listens where the inbound rule redirects (15006), terminates TLS and
    requires a client certificate from the CA (``verify required``), forwards to the local app."""
    ssl = ""
    if tls is not None:
        ssl = f" ssl crt {tls.cert_pem} ca-file {tls.ca_pem} verify required alpn http/1.1"
    return "\n".join([
        _haproxy_global(user, group),
        "frontend inbound",
        f"    bind 0.0.0.0:{inbound_port}{ssl}",
        "    default_backend app",
        "",
        "backend app",
        f"    server app 127.0.0.1:{app_port}",
        "",
    ])


def peer_authentication_disable(namespace: str) -> str:
    """Istio PeerAuthentication turning mTLS off for every workload of ``namespace``."""
    return f"""apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: bench-plaintext
  namespace: {namespace}
spec:
  mtls:
    mode: DISABLE
"""


def openssl_ext(*, dns: str, uri: str) -> str:
    """x509 v3 extensions of a leaf: both TLS roles (each HAProxy is a client or a server)."""
    return (f"subjectAltName=DNS:{dns},URI:{uri}\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth,clientAuth\n")


def intercept_rules(*, proxy_uid: int, proxy_gid: int) -> str:
    """iptables-restore input of meshns's own interception plan, for a proxy running as
    ``proxy_uid``/``proxy_gid`` instead of 1337: the HAProxy namespaces are captured by exactly
    the rules a meshns pod gets (same planner, same renderer), so the baseline pays the same
    netfilter cost and only the proxy differs."""
    return render_save(plan_rules(InterceptSpec(proxy_uid=proxy_uid, proxy_gid=proxy_gid)))


def rule_lines(save_text: str) -> list[str]:
    """The ``-A`` lines of iptables-save text (counters and comments about generation dropped),
    to compare what was planned with what the kernel reports."""
    return [line.strip() for line in save_text.splitlines() if line.startswith("-A ")]
