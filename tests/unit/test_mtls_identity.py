"""SPIFFE IDs: parsing good and bad URIs, the principal form, namespace extraction."""

from __future__ import annotations

import pytest

from meshns.errors import UserError
from meshns.mtls.identity import DEFAULT_TRUST_DOMAIN, IdentityError, SpiffeId, namespace_of, principal_of


@pytest.mark.parametrize(("uri", "td", "ns", "sa"), [
    ("spiffe://cluster.local/ns/default/sa/web", "cluster.local", "default", "web"),
    ("spiffe://example.org/ns/a-b/sa/c.d-e", "example.org", "a-b", "c.d-e"),
    ("spiffe://td_1-x.y/ns/0/sa/9", "td_1-x.y", "0", "9"),
    ("spiffe://t/ns/" + "n" * 63 + "/sa/" + ".".join(["s" * 63] * 4)[:253], "t", "n" * 63,
     ".".join(["s" * 63] * 4)[:253]),
    ("spiffe://" + "t" * 255 + "/ns/a/sa/b", "t" * 255, "a", "b"),
])
def test_parse_good(uri: str, td: str, ns: str, sa: str) -> None:
    sid = SpiffeId.parse(uri)
    assert (sid.trust_domain, sid.namespace, sid.service_account) == (td, ns, sa)
    assert sid.uri == uri
    assert sid.principal == uri.removeprefix("spiffe://")
    assert str(sid) == uri


@pytest.mark.parametrize(("uri", "reason"), [
    ("", "wrong scheme"),
    ("http://cluster.local/ns/a/sa/b", "wrong scheme"),
    ("SPIFFE://cluster.local/ns/a/sa/b", "wrong scheme"),
    ("cluster.local/ns/a/sa/b", "wrong scheme"),
    ("spiffe://cluster.local", "not of the form"),
    ("spiffe://cluster.local/", "not of the form"),
    ("spiffe://cluster.local/ns/a", "not of the form"),
    ("spiffe://cluster.local/ns/a/sa", "not of the form"),
    ("spiffe://cluster.local/ns/a/sa/b/extra", "not of the form"),
    ("spiffe://cluster.local/ns/a/sa/b/", "not of the form"),
    ("spiffe://cluster.local/sa/b/ns/a", "not of the form"),
    ("spiffe://cluster.local/workload/x", "not of the form"),
    ("spiffe:///ns/a/sa/b", "trust domain is empty"),
    ("spiffe://Cluster.local/ns/a/sa/b", "trust domain"),
    ("spiffe://cluster.local:8080/ns/a/sa/b", "trust domain"),
    ("spiffe://user@td/ns/a/sa/b", "trust domain"),
    ("spiffe://" + "t" * 256 + "/ns/a/sa/b", "too long"),
    ("spiffe://td/ns//sa/b", "namespace is empty"),
    ("spiffe://td/ns/A/sa/b", "namespace"),
    ("spiffe://td/ns/-a/sa/b", "namespace"),
    ("spiffe://td/ns/a-/sa/b", "namespace"),
    ("spiffe://td/ns/a.b/sa/c", "namespace"),
    ("spiffe://td/ns/" + "n" * 64 + "/sa/b", "namespace is too long"),
    ("spiffe://td/ns/a/sa/", "service account is empty"),
    ("spiffe://td/ns/a/sa/B", "service account"),
    ("spiffe://td/ns/a/sa/b..c", "service account"),
    ("spiffe://td/ns/a/sa/.b", "service account"),
    ("spiffe://td/ns/a/sa/b?x=1", "service account"),
    ("spiffe://td/ns/a/sa/b#f", "service account"),
    ("spiffe://td/ns/a/sa/b%2f", "service account"),
    ("spiffe://td/ns/a/sa/b c", "service account"),
    ("spiffe://td/ns/a/sa/" + "s" * 254, "service account is too long"),
    ("spiffe://td/ns/../sa/b", "namespace"),
])
def test_parse_bad(uri: str, reason: str) -> None:
    with pytest.raises(IdentityError, match=reason):
        SpiffeId.parse(uri)


def test_identity_error_is_a_user_error() -> None:
    assert issubclass(IdentityError, UserError)
    assert IdentityError.exit_code == 2


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(IdentityError, match="namespace"):
        SpiffeId("cluster.local", "Bad", "web")
    assert SpiffeId(DEFAULT_TRUST_DOMAIN, "default", "web").uri == "spiffe://cluster.local/ns/default/sa/web"


@pytest.mark.parametrize(("given", "principal"), [
    ("spiffe://cluster.local/ns/a/sa/b", "cluster.local/ns/a/sa/b"),
    ("cluster.local/ns/a/sa/b", "cluster.local/ns/a/sa/b"),
    ("", ""),
])
def test_principal_of(given: str, principal: str) -> None:
    assert principal_of(given) == principal


@pytest.mark.parametrize(("given", "ns"), [
    ("spiffe://cluster.local/ns/shop/sa/web", "shop"),
    ("cluster.local/ns/shop/sa/web", "shop"),
    ("", None),
    ("spiffe://cluster.local/ns/shop", None),
    ("cluster.local/ns//sa/web", None),
    ("cluster.local/sa/web/ns/shop", None),
    ("spiffe://cluster.local/ns/shop/sa/web/x", None),
    ("*", None),
])
def test_namespace_of(given: str, ns: str | None) -> None:
    assert namespace_of(given) == ns
