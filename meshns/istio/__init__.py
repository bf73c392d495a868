"""Istio's networking API (VirtualService, DestinationRule) as meshns' user-facing config.

parse: YAML text -> validated ConfigDocs + warnings (all or nothing); compile: the applied docs
for one service -> ServicePolicy (the snapshot's route/lb/pool/outlier fields); render: docs
back to YAML/JSON for `meshns get`.

The names below are loaded on first use (PEP 562): the CLI imports small pieces of this package
(durations, say) on paths where YAML parsing and the compiler are not needed at all.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshns.istio.compile import ServicePolicy, compile_service
    from meshns.istio.destinationrule import DestinationRuleSpec
    from meshns.istio.parse import ConfigDoc, ParseResult, parse_documents
    from meshns.istio.render import to_json, to_yaml
    from meshns.istio.virtualservice import VirtualServiceSpec

_WHERE = {
    "ServicePolicy": "compile", "compile_service": "compile",
    "DestinationRuleSpec": "destinationrule",
    "ConfigDoc": "parse", "ParseResult": "parse", "parse_documents": "parse",
    "to_json": "render", "to_yaml": "render",
    "VirtualServiceSpec": "virtualservice",
}

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


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
