"""The field names of every Istio object meshns reads, split into what meshns implements and what
it only knows.

Two lists per object are what let parse tell a typo from a feature gap: a key in neither list is
not an Istio field (an error, with a did-you-mean), a key in ``ignored`` is valid Istio that
meshns does not implement (a warning naming the field, so nobody believes it took effect). A
third list, ``refused``, is valid Istio that meshns does not implement and must not ignore either
(an authorization match condition: dropping it widens the rule); the object's parser fails on it
with the reason. Names follow Istio's API reference (networking.istio.io/v1, security.istio.io/v1).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schema:
    name: str  # Istio's message name, shown in errors
    implemented: frozenset[str]
    ignored: frozenset[str] = frozenset()
    refused: frozenset[str] = frozenset()  # Node.obj accepts them; the parser must fail on them

    @property
    def known(self) -> frozenset[str]:
        return self.implemented | self.ignored | self.refused


def _s(name: str, implemented: str, ignored: str = "", refused: str = "") -> Schema:
    return Schema(name, frozenset(implemented.split()), frozenset(ignored.split()), frozenset(refused.split()))


# Kubernetes envelope. `status` is written by a control plane, never by the user: ignored.
DOCUMENT = _s("document", "apiVersion kind metadata spec", "status")
# labels/annotations are kept in the raw document (round trip) and mean nothing to routing, so
# they are accepted silently; the rest of ObjectMeta is server-populated or Kubernetes-only.
METADATA = _s(
    "ObjectMeta", "name namespace labels annotations",
    "generateName selfLink uid resourceVersion generation creationTimestamp deletionTimestamp "
    "deletionGracePeriodSeconds ownerReferences finalizers managedFields",
)

# gateways is implemented only as "mesh" (the sidecar itself); the parser warns on other values.
VIRTUAL_SERVICE = _s("VirtualService", "hosts gateways http", "tls tcp exportTo")
HTTP_ROUTE = _s(
    "HTTPRoute", "name match route timeout retries fault",
    "redirect delegate rewrite mirror mirrors mirrorPercentage corsPolicy headers directResponse",
)
HTTP_MATCH = _s(
    "HTTPMatchRequest", "name uri method headers",
    "scheme authority port sourceLabels gateways queryParams ignoreUriCase withoutHeaders "
    "sourceNamespace statPrefix",
)
STRING_MATCH = _s("StringMatch", "exact prefix regex")
ROUTE_DESTINATION = _s("HTTPRouteDestination", "destination weight", "headers")
DESTINATION = _s("Destination", "host subset", "port")
HTTP_RETRY = _s(
    "HTTPRetry", "attempts perTryTimeout retryOn",
    "retryRemoteLocalities retryIgnorePreviousHosts backoff",
)
FAULT = _s("HTTPFaultInjection", "delay abort")
FAULT_DELAY = _s("HTTPFaultInjection.Delay", "fixedDelay percentage percent")
FAULT_ABORT = _s("HTTPFaultInjection.Abort", "httpStatus percentage", "grpcStatus http2Error")
PERCENT = _s("Percent", "value")

DESTINATION_RULE = _s("DestinationRule", "host trafficPolicy subsets", "exportTo workloadSelector")
TRAFFIC_POLICY = _s(
    "TrafficPolicy", "loadBalancer connectionPool outlierDetection",
    "tls portLevelSettings tunnel proxyProtocol",
)
LOAD_BALANCER = _s(
    "LoadBalancerSettings", "simple", "consistentHash localityLbSetting warmupDurationSecs",
)
CONNECTION_POOL = _s("ConnectionPoolSettings", "tcp http")
POOL_TCP = _s(
    "ConnectionPoolSettings.TCPSettings", "maxConnections connectTimeout",
    "tcpKeepalive maxConnectionDuration idleTimeout",
)
POOL_HTTP = _s(
    "ConnectionPoolSettings.HTTPSettings",
    "http1MaxPendingRequests http2MaxRequests maxRequestsPerConnection idleTimeout",
    "maxRetries h2UpgradePolicy useClientProtocol maxConcurrentStreams",
)
OUTLIER = _s(
    "OutlierDetection",
    "consecutiveErrors consecutive5xxErrors consecutiveGatewayErrors interval baseEjectionTime "
    "maxEjectionPercent",
    "consecutiveLocalOriginFailures splitExternalLocalOriginErrors minHealthPercent",
)
# Subset-level trafficPolicy is valid Istio; meshns applies policy per service only.
SUBSET = _s("Subset", "name labels", "trafficPolicy")

# security.istio.io/v1. Selectors only have matchLabels; targetRef(s) (Gateway API attachment)
# would change which workloads a policy applies to, so it is refused rather than ignored.
WORKLOAD_SELECTOR = _s("WorkloadSelector", "matchLabels")
PEER_AUTHENTICATION = _s("PeerAuthentication", "selector mtls portLevelMtls")
MUTUAL_TLS = _s("PeerAuthentication.MutualTLS", "mode")
AUTHORIZATION_POLICY = _s("AuthorizationPolicy", "selector action rules", refused="targetRef targetRefs provider")
AUTHZ_RULE = _s("Rule", "from to", refused="when")
AUTHZ_FROM = _s("Rule.From", "source")
AUTHZ_TO = _s("Rule.To", "operation")
AUTHZ_SOURCE = _s(
    "Source", "principals notPrincipals namespaces notNamespaces",
    refused="requestPrincipals notRequestPrincipals ipBlocks notIpBlocks remoteIpBlocks notRemoteIpBlocks "
    "serviceAccounts notServiceAccounts",
)
AUTHZ_OPERATION = _s("Operation", "ports notPorts methods notMethods paths notPaths", refused="hosts notHosts")

# Envoy's retry conditions that Istio passes through but meshns' data plane does not evaluate:
# valid in Istio YAML, so a warning (the condition is dropped), not an error like a typo.
ENVOY_RETRY_ON_NOT_IMPLEMENTED = frozenset({
    "retriable-4xx", "envoy-ratelimited", "reset-before-request", "retriable-headers",
    "http3-post-connect-failure",
})
