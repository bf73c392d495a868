"""Names as Istio writes them, reduced to what meshns means by them.

meshns has one flat set of services, so an Istio host in any of its spellings (``reviews``,
``reviews.default``, ``reviews.default.svc.cluster.local``) names the service of its first
label. Wildcards would select many services at once, which meshns' per-service compile can't
express, so they are refused rather than half-applied.
"""

from __future__ import annotations

import re

from meshns.istio.reader import Node

DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# Kubernetes object names (metadata.name): dot-separated DNS labels, at most 253 characters.
DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


def service_of_host(node: Node) -> str:
    host = node.str_()
    if "*" in host:
        node.fail(f"wildcard hosts are not supported by meshns, got {host!r}")
    if not DNS_SUBDOMAIN.fullmatch(host):
        node.fail(f"must be a service name or its DNS name (lower-case DNS labels), got {host!r}")
    return host.split(".", 1)[0]
