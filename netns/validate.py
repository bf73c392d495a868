"""The init step's validation: prove that interception works before the app may start.

Like Istio's iptables validation, a probe connection must come back through the sidecar with
the right original destination. The sidecar answers any connection whose original destination
port is PROBE_PORT with ``meshns-probe <direction> <ip>:<port>``, which can only happen if the
REDIRECT rule fired and SO_ORIGINAL_DST recovered the address:

- outbound: from inside the pod (as root, i.e. not the proxy user) to the bridge's address;
- inbound: from the host to the pod's address.

Both destinations are addresses of this mesh (the bridge and the pod), so even a broken rule
sends nothing anywhere else.
"""

from __future__ import annotations

import socket
import time
from ipaddress import IPv4Address

from meshns.errors import ValidationFailed
from meshns.netns.child import run_in_netns
from meshns.ports import INBOUND_SOURCE_IP, PROBE_PORT
from meshns.trace import mark


def expected_answer(direction: str, ip: IPv4Address, port: int = PROBE_PORT) -> str:
    return f"meshns-probe {direction} {ip}:{port}"


def probe(ip: str, port: int, timeout_s: float) -> str:
    with socket.create_connection((ip, port), timeout=timeout_s) as s:
        data = b""
        while not data.endswith(b"\n") and len(data) < 256:
            chunk = s.recv(256)
            if not chunk:
                break
            data += chunk
    return data.decode("ascii", "replace").strip()


def validate(netns: str, pod_ip: IPv4Address, gateway: IPv4Address, timeout_s: float) -> None:
    """Retry both probes until they answer as expected or timeout_s passes."""
    deadline = time.monotonic() + timeout_s
    want_out = expected_answer("outbound", gateway)
    want_in = expected_answer("inbound", pod_ip)
    last = "no attempt"
    out_ok = in_ok = False
    while True:
        try:
            if not out_ok:
                got = run_in_netns(netns, probe, str(gateway), PROBE_PORT, 1.0)
                out_ok = got == want_out
                last = f"outbound probe answered {got!r}, expected {want_out!r}"
            if out_ok and not in_ok:
                got = probe(str(pod_ip), PROBE_PORT, 1.0)
                in_ok = got == want_in
                last = f"inbound probe answered {got!r}, expected {want_in!r}"
        except OSError as exc:
            last = f"{'inbound' if out_ok else 'outbound'} probe failed: {exc}"
        if out_ok and in_ok:
            return
        mark("sup:probe-retry")
        if time.monotonic() >= deadline:
            raise ValidationFailed(f"interception validation failed: {last}")
        # The sidecar was just configured and binds within tens of milliseconds: retry often (a
        # refused probe costs one fork), since create waits for exactly this.
        time.sleep(0.005)


def _app_listening(pod_ip: str, ports: tuple[int, ...], source: str, timeout_s: float) -> tuple[int, ...]:
    """In the pod: the ports that do not accept yet, dialled exactly as the inbound sidecar does."""
    deadline = time.monotonic() + timeout_s
    waiting = list(ports)
    while waiting:
        for port in list(waiting):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                s.bind((source, 0))  # 127.0.0.6: the loop breaker, so the rules let the dial through
                try:
                    s.connect((pod_ip, port))
                    waiting.remove(port)
                except OSError:
                    pass
        if waiting and time.monotonic() >= deadline:
            break
        if waiting:
            time.sleep(0.02)
    return tuple(waiting)


def wait_app_serving(netns: str, pod_ip: IPv4Address, ports: tuple[int, ...], timeout_s: float) -> None:
    """Wait until the app accepts on every service target port (a TCP readiness probe).

    A pod becomes an endpoint only once it can serve: published earlier, the first requests are
    refused, retried elsewhere, and outlier detection ejects the new endpoint for 30 s.
    """
    if not ports:
        return
    missing = run_in_netns(netns, _app_listening, str(pod_ip), ports, INBOUND_SOURCE_IP, timeout_s)
    if missing:
        raise ValidationFailed(
            f"the app did not accept connections on port {', '.join(map(str, missing))} within {timeout_s:.0f} s "
            "(is it listening on the --service target port? a slow starter needs a longer --ready-timeout)")
