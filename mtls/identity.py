"""SPIFFE workload identities in Istio's shape: ``spiffe://<trust-domain>/ns/<namespace>/sa/<account>``.

The URI is what goes into a certificate's SAN and what a peer is checked against; the principal
(the URI without ``spiffe://``) is the form Istio's AuthorizationPolicy writes. Parsing is strict so
that an identity that passes here can be used in a file name, a log line or a policy key as is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshns.errors import UserError

DEFAULT_TRUST_DOMAIN = "cluster.local"
SCHEME = "spiffe://"

TRUST_DOMAIN_MAX = 255
NAMESPACE_MAX = 63
SERVICE_ACCOUNT_MAX = 253

_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9._-]+")
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_LABEL_RE = re.compile(_LABEL)
_SUBDOMAIN_RE = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_SHAPE = "spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"


class IdentityError(UserError):
    """A SPIFFE ID, trust domain, namespace or service account that is not well formed."""


def validate_trust_domain(td: str) -> str:
    if not td:
        raise IdentityError("trust domain is empty")
    if len(td) > TRUST_DOMAIN_MAX:
        raise IdentityError(f"trust domain is too long ({len(td)} > {TRUST_DOMAIN_MAX} characters)")
    if not _TRUST_DOMAIN_RE.fullmatch(td):
        raise IdentityError(f"trust domain {td!r} is invalid: use lower-case letters, digits, '.', '_' and '-'")
    return td


def validate_namespace(ns: str) -> str:
    if not ns:
        raise IdentityError("namespace is empty")
    if len(ns) > NAMESPACE_MAX:
        raise IdentityError(f"namespace is too long ({len(ns)} > {NAMESPACE_MAX} characters)")
    if not _LABEL_RE.fullmatch(ns):
        raise IdentityError(f"namespace {ns!r} is invalid: use lower-case letters, digits and inner '-' (a DNS label)")
    return ns


def validate_service_account(sa: str) -> str:
    if not sa:
        raise IdentityError("service account is empty")
    if len(sa) > SERVICE_ACCOUNT_MAX:
        raise IdentityError(f"service account is too long ({len(sa)} > {SERVICE_ACCOUNT_MAX} characters)")
    if not _SUBDOMAIN_RE.fullmatch(sa):
        raise IdentityError(
            f"service account {sa!r} is invalid: use dot-separated DNS labels "
            "(lower-case letters, digits and inner '-')"
        )
    return sa


@dataclass(frozen=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        # Constructing one directly is held to the same rules as parsing one: every SpiffeId in
        # the program is known to be well formed.
        validate_trust_domain(self.trust_domain)
        validate_namespace(self.namespace)
        validate_service_account(self.service_account)

    @property
    def principal(self) -> str:
        return f"{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def uri(self) -> str:
        return SCHEME + self.principal

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        if not uri.startswith(SCHEME):
            raise IdentityError(f"SPIFFE ID {uri!r} has the wrong scheme: expected {_SHAPE}")
        td, sep, path = uri[len(SCHEME):].partition("/")
        parts = path.split("/")
        if not sep or len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa":
            raise IdentityError(f"SPIFFE ID {uri!r} is not of the form {_SHAPE}")
        try:
            return cls(td, parts[1], parts[3])
        except IdentityError as exc:
            raise IdentityError(f"SPIFFE ID {uri!r}: {exc}") from None


def principal_of(uri: str) -> str:
    """``spiffe://td/ns/a/sa/b`` -> ``td/ns/a/sa/b`` (a principal passes through; "" stays "")."""
    return uri.removeprefix(SCHEME)


def namespace_of(uri_or_principal: str) -> str | None:
    """The namespace of a SPIFFE URI or principal of the ns/sa shape, else None."""
    parts = principal_of(uri_or_principal).split("/")
    if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa" or not all(parts):
        return None
    return parts[2]
