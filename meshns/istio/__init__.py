"""Istio's networking API (VirtualService, DestinationRule) as meshns' user-facing config.

parse: YAML text -> validated ConfigDocs + warnings (all or nothing); compile: the applied docs
for one service -> ServicePolicy (the snapshot's route/lb/pool/outlier fields); render: docs
back to YAML/JSON for `meshns get`.
"""

from meshns.istio.compile import ServicePolicy, compile_service
from meshns.istio.destinationrule import DestinationRuleSpec
from meshns.istio.parse import ConfigDoc, ParseResult, parse_documents
from meshns.istio.render import to_json, to_yaml
from meshns.istio.virtualservice import VirtualServiceSpec

__all__ = [
    "ConfigDoc",
    "DestinationRuleSpec",
    "ParseResult",
    "ServicePolicy",
    "VirtualServiceSpec",
    "compile_service",
    "parse_documents",
    "to_json",
    "to_yaml",
]
