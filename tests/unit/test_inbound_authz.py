"""The server sidecar's request-path pieces of authorization: path normalization and the identity headers."""

from __future__ import annotations

import pytest

from meshns.dataplane.inbound_authz import deny_http, deny_tcp, normalize_target, set_identity_headers
from meshns.snapshot import AuthzOperation, AuthzPolicy, AuthzRule, Security


@pytest.mark.parametrize(("given", "want"), [
    (b"/", b"/"),
    (b"/admin", b"/admin"),
    (b"/a/b/?x=/../y", b"/a/b/?x=/../y"),  # the query is not a path
    (b"/./admin", b"/admin"),
    (b"//admin", b"/admin"),
    (b"/public/../admin", b"/admin"),
    (b"/public/..", b"/"),
    (b"/a/./b/.", b"/a/b/"),
    (b"/../../admin", b"/admin"),
    (b"/%61dmin", b"/admin"),
    (b"/%7Euser/%2e%2e/admin", b"/admin"),
    (b"/a%2Fb", b"/a%2Fb"),  # an escaped slash is not a separator; it stays escaped
    (b"/a%20b", b"/a%20b"),  # reserved/unsafe escapes are kept
    (b"/a//b///c", b"/a/b/c"),
    (b"*", b"*"),
    (b"http://h/x/../y", b"http://h/x/../y"),
])
def test_normalize_target(given: bytes, want: bytes) -> None:
    assert normalize_target(given) == want


DENY_ADMIN = (AuthzPolicy("default/no-admin", "DENY", (AuthzRule(operations=(AuthzOperation(paths=("/admin*",)),)),)),)


@pytest.mark.parametrize("target", [b"/admin", b"/./admin", b"//admin/x", b"/public/../admin", b"/%61dmin"])
def test_deny_cannot_be_walked_around(target: bytes) -> None:
    sec = Security(policies=DENY_ADMIN)
    assert deny_http(sec, "", 80, b"GET", normalize_target(target)) is not None


def test_revoked_identity_is_denied_before_any_policy() -> None:
    sec = Security(revoked=("spiffe://td/ns/a/sa/b",))
    assert "revoked" in (deny_http(sec, "spiffe://td/ns/a/sa/b", 80, b"GET", b"/") or "")
    assert "revoked" in (deny_tcp(sec, "spiffe://td/ns/a/sa/b", 80) or "")
    assert deny_tcp(sec, "spiffe://td/ns/a/sa/c", 80) is None


def test_identity_headers_are_replaced_never_trusted() -> None:
    headers = [(b"Host", b"x"), (b"X-MeshNS-Client-Id", b"spiffe://forged"), (b"x-forwarded-client-cert", b"URI=x")]
    set_identity_headers(headers, "spiffe://td/ns/a/sa/b", "spiffe://td/ns/a/sa/srv")
    assert headers == [(b"Host", b"x"), (b"x-meshns-client-id", b"spiffe://td/ns/a/sa/b"),
                       (b"x-forwarded-client-cert", b"By=spiffe://td/ns/a/sa/srv;URI=spiffe://td/ns/a/sa/b")]
    plain = [(b"x-meshns-client-id", b"spiffe://forged")]
    set_identity_headers(plain, "", "spiffe://td/ns/a/sa/srv")
    assert plain == []
