"""`meshns apply -f FILE`: Istio's own YAML in, typed and validated config documents out.

All or nothing: the first bad document raises UserError naming the file, the document (position
in the stream, kind and name) and the dotted path of the bad field, and nothing is returned, so
the caller never applies half a file. Valid Istio that meshns does not implement is not an error
but a warning naming the field. A kubectl ``List`` (what ``kubectl get -o json`` and
render.to_json write) is unpacked into its items.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from meshns.errors import UserError
from meshns.istio import schema as S
from meshns.istio.destinationrule import DestinationRuleSpec, parse_destination_rule
from meshns.istio.hosts import DNS_LABEL, DNS_SUBDOMAIN
from meshns.istio.reader import Ctx, FieldError, Node, show
from meshns.istio.security import (
    AuthorizationPolicySpec,
    PeerAuthenticationSpec,
    parse_authorization_policy,
    parse_peer_authentication,
)
from meshns.istio.virtualservice import VirtualServiceSpec, parse_virtual_service

NETWORKING_VERSIONS = ("networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3")
SECURITY_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")
SECURITY_KINDS = ("PeerAuthentication", "AuthorizationPolicy")

Spec = VirtualServiceSpec | DestinationRuleSpec | PeerAuthenticationSpec | AuthorizationPolicySpec
# kind -> (the apiVersions it is accepted in, its spec parser)
_SPEC_PARSERS: dict[str, tuple[tuple[str, ...], Callable[[Node], Spec]]] = {
    "VirtualService": (NETWORKING_VERSIONS, parse_virtual_service),
    "DestinationRule": (NETWORKING_VERSIONS, parse_destination_rule),
    "PeerAuthentication": (SECURITY_VERSIONS, parse_peer_authentication),
    "AuthorizationPolicy": (SECURITY_VERSIONS, parse_authorization_policy),
}
# Maps keyed by numbers (PeerAuthentication's portLevelMtls: {8080: {...}}): YAML makes the keys
# ints, JSON can only hold strings, and the spec parser reads either spelling.
_NUMBER_KEYED = frozenset({"spec.portLevelMtls"})


@dataclass(frozen=True)
class ConfigDoc:
    kind: str
    name: str
    namespace: str
    api_version: str
    spec: Spec
    raw: dict[str, Any] = field(hash=False)  # the document as given (JSON-safe), for `meshns get`


@dataclass(frozen=True)
class ParseResult:
    docs: list[ConfigDoc]
    warnings: list[str]


def parse_documents(text: str, source: str = "<input>") -> ParseResult:
    return parse_values(_documents(text, source))


def parse_values(values: Iterable[tuple[str, object]]) -> ParseResult:
    """Documents already loaded (label, value): how stored JSON documents are read back without
    going through the YAML parser (pure Python, and most of a large mesh's recompile)."""
    docs: list[ConfigDoc] = []
    warnings: list[str] = []
    seen: dict[tuple[str, str, str], str] = {}
    for where, value in values:
        doc, doc_warnings = _parse_one(value, where)
        key = (doc.kind, doc.namespace, doc.name)
        if key in seen:
            # Two versions of one object in one apply: whichever won would be an accident of order.
            raise UserError(f"{where} ({doc.kind} {doc.name}): {doc.kind} {doc.namespace}/{doc.name} is "
                            f"also defined by {seen[key]}")
        seen[key] = where
        docs.append(doc)
        warnings.extend(f"{doc.kind} {doc.name}: {w}" for w in doc_warnings)
    return ParseResult(docs=docs, warnings=warnings)


def _documents(text: str, source: str) -> Iterator[tuple[str, object]]:
    """(label, value) per non-empty document; the label counts from 1 in the file, empties included."""
    import yaml  # noqa: PLC0415 - only apply -f parses YAML; publish (every create) imports this module

    try:
        values = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise UserError(f"{source}: not valid YAML: {exc}") from None
    for index, value in enumerate(values, start=1):
        where = f"{source} doc {index}"
        if value is None:
            continue
        if isinstance(value, dict) and value.get("kind") == "List" and value.get("apiVersion") == "v1":
            items = value.get("items") or []
            if not isinstance(items, list):
                raise UserError(f"{where}: items: must be a list, got {show(items)}")
            for n, item in enumerate(items):
                yield f"{where} items[{n}]", item
        else:
            yield where, value


def _parse_one(given: object, where: str) -> tuple[ConfigDoc, list[str]]:
    ctx = Ctx()
    try:
        value = _json_safe(given, "")
        root = Node(value, "", ctx)
        root.obj(S.DOCUMENT)
        api_version = root.req("apiVersion").str_()
        kind = root.req("kind").str_()
        meta = root.req("metadata").obj(S.METADATA)
        name = meta.req("name").str_(pattern=DNS_SUBDOMAIN, what="a DNS-1123 subdomain name")
    except FieldError as exc:
        raise UserError(f"{where}: {exc}") from None
    where = f"{where} ({kind} {name})"
    versions, parse_spec = _SPEC_PARSERS.get(kind, ((), None))
    if parse_spec is None or api_version not in versions:
        raise UserError(f"{where}: {api_version} {kind} is not supported (meshns applies VirtualService and "
                        f"DestinationRule of {', '.join(NETWORKING_VERSIONS)}, PeerAuthentication and "
                        f"AuthorizationPolicy of {', '.join(SECURITY_VERSIONS)})")
    try:
        ns_node = meta.get("namespace")
        namespace = ns_node.str_(pattern=DNS_LABEL, what="a DNS-1123 label") if ns_node else "default"
        spec_node = root.get("spec")
        if spec_node is None and kind in SECURITY_KINDS:
            # Kubernetes reads a missing spec as empty: UNSET mode, or an ALLOW that allows nothing.
            spec_node = Node({}, "spec", ctx)
        spec = parse_spec(spec_node if spec_node is not None else root.req("spec"))
    except FieldError as exc:
        raise UserError(f"{where}: {exc}") from None
    assert isinstance(value, dict)  # root.obj() checked it
    doc = ConfigDoc(kind=kind, name=name, namespace=namespace, api_version=api_version, spec=spec,
                    raw=value)
    return doc, ctx.warnings


def _json_safe(value: object, path: str) -> object:
    """A fresh copy of `value` that survives JSON (meshns get -o json, the registry) unchanged.

    YAML makes dates, binary, sets, NaN and non-string keys from unquoted scalars: refused with the
    path. JSON writes characters beyond U+FFFF as a surrogate-pair escape, which the YAML loader
    decodes as two lone surrogates: joined back, so a JSON document reads as it would in JSON.
    The copy also unshares YAML anchors, so raw can't change behind the caller's back.
    """
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for given_key, v in value.items():
            k = given_key
            if path in _NUMBER_KEYED and isinstance(k, int) and not isinstance(k, bool):
                k = str(k)  # JSON's spelling of the same key
                if k in value or k in out:
                    raise FieldError(f"{path}.{k}", f"is given twice ({given_key} and {k!r})")
            if not isinstance(k, str):
                raise FieldError(path or "(document)", f"keys must be strings, got {show(k)} (quote it)")
            key = _join_surrogates(k, path)
            out[key] = _json_safe(v, f"{path}.{key}" if path else key)
        return out
    if isinstance(value, list):
        return [_json_safe(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):
        return _join_surrogates(value, path)
    if isinstance(value, float) and not math.isfinite(value):
        raise FieldError(path, f"must be a finite number, got {value}")
    if value is not None and not isinstance(value, int | float | bool):
        raise FieldError(path, f"must be a string, number, list or object, got YAML {type(value).__name__} "
                               f"{value!s} (quote it)")
    return value


def _join_surrogates(text: str, path: str) -> str:
    if not any("\ud800" <= c <= "\udfff" for c in text):
        return text
    try:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    except UnicodeDecodeError:
        raise FieldError(path, f"contains an unpaired UTF-16 surrogate: {text!r}") from None
