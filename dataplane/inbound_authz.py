"""What the server's sidecar enforces for its pod: authorization and the verified client identity.

Checked per connection for opaque TCP (once it is known not to be HTTP) and per request for
HTTP, against the snapshot current at that moment, so a new AuthorizationPolicy or a revocation
applies to the next request on a connection already open. The identity headers are always
removed from what the client sent and, with mTLS, set from the verified certificate: no client
can forge them.
"""

from __future__ import annotations

import re
from typing import Final

from meshns.dataplane.http1.head import Headers
from meshns.mtls.authz import evaluate_http, evaluate_tcp
from meshns.snapshot import Security

# Like Linkerd's l5d-client-id: the verified SPIFFE ID of the calling workload.
CLIENT_ID_HEADER: Final = b"x-meshns-client-id"
# Istio's (Envoy's) header for the same fact, in its format: By=<server id>;URI=<client id>.
XFCC_HEADER: Final = b"x-forwarded-client-cert"
_STRIP: Final = frozenset({CLIENT_ID_HEADER, XFCC_HEADER})
DENIED_HEADER: Final = b"x-meshns-denied-reason"
RBAC_FLAG: Final = "RBAC"  # Envoy's response flag for a request its RBAC filter denied


_UNRESERVED_ESCAPE = re.compile(rb"%(2[dDeE]|3[0-9]|[46][1-9a-fA-F]|[57][0-9aA]|5[fF]|7[eE])")


def normalize_target(target: bytes) -> bytes:
    """The path an authorization decision is made on, and the one then forwarded (so the app
    cannot see a different path than the policy did): RFC 3986 normalization as Istio's default
    (percent-escapes of unreserved characters decoded, "." and ".." segments resolved) plus
    merged slashes. Without it "/./admin", "//admin" or "/%61dmin" walk past a DENY on "/admin*"
    (CVE-2021-31920 in Envoy). Escaped slashes stay escaped. Targets not starting with "/"
    (absolute-form, "*") are left alone; the evaluator reduces absolute-form to its path."""
    if not target.startswith(b"/"):
        return target
    path, sep, query = target.partition(b"?")
    if b"%" in path:
        path = _UNRESERVED_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), path)
    if b"//" in path or b"/." in path:
        out: list[bytes] = []
        segments = path.split(b"/")[1:]
        for i, seg in enumerate(segments):
            last = i == len(segments) - 1
            if seg == b"..":
                if out:
                    out.pop()
                if last:
                    out.append(b"")
            elif seg == b".":
                if last:
                    out.append(b"")
            elif seg or last:
                out.append(seg)
        path = b"/" + b"/".join(out)
    return path + sep + query


def revoked_reason(security: Security, peer: str) -> str | None:
    if peer and peer in security.revoked:
        return f"identity {peer} is revoked"
    return None


def deny_tcp(security: Security, peer: str, port: int) -> str | None:
    """None when the connection may proceed, else why not."""
    why = revoked_reason(security, peer)
    if why is not None:
        return why
    if not security.policies:
        return None
    verdict = evaluate_tcp(security.policies, peer, port)
    return None if verdict.allowed else verdict.reason


def deny_http(security: Security, peer: str, port: int, method: bytes, target: bytes) -> str | None:
    why = revoked_reason(security, peer)
    if why is not None:
        return why
    if not security.policies:
        return None
    verdict = evaluate_http(security.policies, peer, port, method.decode("latin-1"), target.decode("latin-1"))
    return None if verdict.allowed else verdict.reason


def set_identity_headers(headers: Headers, peer: str, own: str) -> None:
    """Drop client-supplied identity headers; add the verified ones when the peer is known."""
    if any(name.lower() in _STRIP for name, _ in headers):
        headers[:] = [(n, v) for n, v in headers if n.lower() not in _STRIP]
    if peer:
        headers.append((CLIENT_ID_HEADER, peer.encode("ascii", "replace")))
        headers.append((XFCC_HEADER, f"By={own};URI={peer}".encode("ascii", "replace")))
